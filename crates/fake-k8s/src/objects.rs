//! What the API server does to an object between the request and the store:
//! validation (422; the field rules are in `validate`), defaulting (the server-filled pod fields of recording
//! 01, Secret `stringData`, Service and PVC defaults), Pod Security admission,
//! `managedFields`, replace and patch, and the controllers that act right
//! after a write (PVC binding and protection, garbage collection of owned
//! objects).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::Shared;
use super::api::{self, ApiError};
use super::store::{Resource, reorder};
use super::validate;

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn now_rfc3339() -> String {
    rfc3339(Utc::now())
}

// ---------------------------------------------------------------------------
// base64 (Secret data and continue tokens); small enough not to need a crate.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// URL-safe alphabet without padding, as continue tokens use.
pub fn base64_encode_url(data: &[u8]) -> String {
    base64_encode(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes standard or URL-safe base64, padded or not.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(format!("illegal base64 data at input byte {c}")),
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Validation helpers

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

type Causes = Vec<(String, &'static str, String)>;

fn invalid_value(field: &str, value: &str, why: &str) -> (String, &'static str, String) {
    (
        field.to_string(),
        "FieldValueInvalid",
        format!(
            "Invalid value: {}: {why}",
            serde_json::to_string(value).unwrap_or_default()
        ),
    )
}

fn required(field: &str, detail: &str) -> (String, &'static str, String) {
    let msg = if detail.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {detail}")
    };
    (field.to_string(), "FieldValueRequired", msg)
}

fn validate_metadata(resource: Resource, meta: &Value, causes: &mut Causes) {
    let name = meta["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let ok = match resource {
            Resource::Services => is_dns1035_label(name),
            _ => is_dns1123_subdomain(name),
        };
        if !ok {
            let msg = if resource == Resource::Services {
                DNS1035_LABEL_MSG
            } else {
                DNS1123_SUBDOMAIN_MSG
            };
            causes.push(invalid_value("metadata.name", name, msg));
        }
    }
    let mut rules = validate::Causes::default();
    validate::label_map(&mut rules, "metadata.labels", &meta["labels"]);
    validate::annotations(&mut rules, &meta["annotations"]);
    causes.append(&mut rules.0);
}

fn validate_pod(pod: &Value, causes: &mut Causes) {
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(required("spec.containers", ""));
    }
    let mut seen = Vec::new();
    for (list, items) in [
        (
            "initContainers",
            spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        ),
        ("containers", containers),
    ] {
        for (i, c) in items.iter().enumerate() {
            let name = c["name"].as_str().unwrap_or_default();
            let field = format!("spec.{list}[{i}].name");
            if name.is_empty() {
                causes.push(required(&field, ""));
            } else if !is_dns1123_label(name) {
                causes.push(invalid_value(&field, name, DNS1123_LABEL_MSG));
            } else if seen.contains(&name.to_string()) {
                causes.push((
                    field,
                    "FieldValueDuplicate",
                    format!(
                        "Duplicate value: {}",
                        serde_json::to_string(name).unwrap_or_default()
                    ),
                ));
            }
            seen.push(name.to_string());
            if c["image"].as_str().unwrap_or_default().is_empty() {
                causes.push(required(&format!("spec.{list}[{i}].image"), ""));
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        causes.push((
            "spec.restartPolicy".into(),
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: \"Always\", \"OnFailure\", \"Never\"",
                serde_json::to_string(rp).unwrap_or_default()
            ),
        ));
    }
    let mut rules = validate::Causes::default();
    validate::pod_spec(&mut rules, spec);
    causes.append(&mut rules.0);
}

// ---------------------------------------------------------------------------
// managedFields

/// A `fieldsV1` set for the fields of `obj`, close to what the server's
/// structured-merge-diff computes (lists of containers keyed by name).
pub fn fields_v1(obj: &Value) -> Value {
    fn walk(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, child) in m {
                    out.insert(format!("f:{k}"), walk_child(child));
                }
                Value::Object(out)
            }
            _ => json!({}),
        }
    }
    fn walk_child(child: &Value) -> Value {
        match child {
            Value::Object(m) if !m.is_empty() => {
                let mut inner = Map::new();
                inner.insert(".".into(), json!({}));
                if let Value::Object(w) = walk(child) {
                    inner.extend(w);
                }
                Value::Object(inner)
            }
            Value::Array(items)
                if items
                    .iter()
                    .all(|i| i.get("name").is_some_and(Value::is_string))
                    && !items.is_empty() =>
            {
                let mut out = Map::new();
                out.insert(".".into(), json!({}));
                for item in items {
                    let key = format!(
                        "k:{{\"name\":{}}}",
                        serde_json::to_string(&item["name"]).unwrap_or_default()
                    );
                    let mut entry = Map::new();
                    entry.insert(".".into(), json!({}));
                    if let Value::Object(w) = walk(item) {
                        entry.extend(w);
                    }
                    out.insert(key, Value::Object(entry));
                }
                Value::Object(out)
            }
            _ => json!({}),
        }
    }
    let mut filtered = obj.clone();
    if let Some(m) = filtered.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "ownerReferences" | "finalizers"
                )
            });
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    walk(&filtered)
}

fn managed_entry(manager: &str, api_version: &str, obj: &Value) -> Value {
    json!({
        "manager": manager, "operation": "Update", "apiVersion": api_version,
        "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(obj),
    })
}

// ---------------------------------------------------------------------------
// create

fn random_suffix(n: usize) -> String {
    // Kubernetes' rand.String alphabet: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    (0..n)
        .map(|i| ALPHABET[bytes[i % 16] as usize % ALPHABET.len()] as char)
        .collect()
}

/// Validates, defaults and stores a new object; returns it with any
/// `Warning` header values (Pod Security `warn` mode).
pub(super) fn create(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: &str,
    mut obj: Value,
    manager: &str,
) -> Result<(Value, Vec<String>), ApiError> {
    let kind = obj["kind"].as_str().unwrap_or(resource.kind()).to_string();
    if kind != resource.kind() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version (v1)",
            obj["apiVersion"].as_str().unwrap_or_default()
        )));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
        && let Some(prefix) = obj["metadata"]["generateName"].as_str()
    {
        obj["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix(5)));
    }
    let mut causes = Causes::new();
    validate_metadata(resource, &obj["metadata"], &mut causes);
    let mut rules = validate::Causes::default();
    match resource {
        Resource::Pods => validate_pod(&obj, &mut causes),
        Resource::Secrets => validate::secret(&mut rules, &obj),
        Resource::Services => validate::service(&mut rules, &obj),
        Resource::PersistentVolumeClaims => validate::claim(&mut rules, &obj),
        Resource::Events => {}
    }
    causes.append(&mut rules.0);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, &name, causes));
    }
    let mut warnings = Vec::new();
    if resource == Resource::Pods {
        warnings = pod_security(shared, ns, &name, &obj)?;
    }
    let api_version = "v1";
    let fields_source = obj.clone();
    match resource {
        Resource::Pods => default_pod(&mut obj),
        Resource::Secrets => default_secret(&mut obj)?,
        Resource::Services => default_service(shared, &mut obj),
        Resource::PersistentVolumeClaims => default_pvc(&mut obj),
        Resource::Events => {}
    }
    let created_at = now_rfc3339();
    let mut fields_obj = fields_source;
    if resource == Resource::Secrets {
        // stringData is write-only: the managed fields name `data` keys.
        fields_obj["data"] = obj["data"].clone();
        if let Some(m) = fields_obj.as_object_mut() {
            m.remove("stringData");
        }
    }
    if resource == Resource::Pods {
        fields_obj["spec"] = obj["spec"].clone();
        strip_server_pod_fields(&mut fields_obj);
    }
    let managed = json!([managed_entry(manager, api_version, &fields_obj)]);
    {
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert("namespace".into(), json!(ns));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(created_at));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if resource == Resource::PersistentVolumeClaims {
            meta.insert("finalizers".into(), json!(["kubernetes.io/pvc-protection"]));
        }
        meta.insert("managedFields".into(), managed);
    }
    finish_object(resource, &mut obj);
    let stored = shared.store().create(resource, ns, obj)?;
    match resource {
        Resource::Pods => super::kubelet::start_pod(shared, &stored),
        Resource::PersistentVolumeClaims => bind_pvc(shared.clone(), ns.to_string(), name.clone()),
        _ => {}
    }
    if stored["metadata"]["ownerReferences"].is_array() {
        collect_if_orphaned(shared.clone(), resource, ns.to_string(), stored.clone());
    }
    Ok((stored, warnings))
}

/// Server-added parts of a pod that a client did not write (for managedFields).
fn strip_server_pod_fields(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vols.retain(|v| {
            !v["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("kube-api-access-")
        });
        if vols.is_empty() {
            spec.as_object_mut().map(|m| m.remove("volumes"));
        }
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                    mounts.retain(|m| {
                        !m["name"]
                            .as_str()
                            .unwrap_or_default()
                            .starts_with("kube-api-access-")
                    });
                    if mounts.is_empty() {
                        c.as_object_mut().map(|m| m.remove("volumeMounts"));
                    }
                }
            }
        }
    }
    if let Some(m) = spec.as_object_mut() {
        for k in [
            "serviceAccount",
            "serviceAccountName",
            "tolerations",
            "priority",
            "preemptionPolicy",
        ] {
            m.remove(k);
        }
    }
}

/// Puts top-level keys in Go order.
fn finish_object(resource: Resource, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("kind".into(), json!(resource.kind()));
        m.insert("apiVersion".into(), json!("v1"));
        reorder(
            m,
            &[
                "kind",
                "apiVersion",
                "metadata",
                "spec",
                "status",
                "data",
                "stringData",
                "type",
            ],
        );
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            reorder(meta, super::store::METADATA_ORDER);
        }
    }
}

const POD_SPEC_ORDER: &[&str] = &[
    "volumes",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    "tolerations",
    "hostAliases",
    "priorityClassName",
    "priority",
    "dnsConfig",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
    "topologySpreadConstraints",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "schedulingGates",
    "resourceClaims",
];

const CONTAINER_ORDER: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "ports",
    "envFrom",
    "env",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "volumeMounts",
    "volumeDevices",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
];

pub const POD_STATUS_ORDER: &[&str] = &[
    "phase",
    "conditions",
    "message",
    "reason",
    "nominatedNodeName",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "qosClass",
    "ephemeralContainerStatuses",
];

/// Whether the image reference has the tag `latest` or none (pull policy Always).
fn image_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn default_pod(pod: &mut Value) {
    let spec = pod["spec"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut spec = Value::Object(spec);
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .unwrap_or(true);
    let token_volume = format!("kube-api-access-{}", random_suffix(5));
    if automount {
        let vol = json!({"name": token_volume, "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ], "defaultMode": 420}});
        match spec["volumes"].as_array_mut() {
            Some(v) => v.push(vol),
            None => spec["volumes"] = json!([vol]),
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            for (src, mode_field) in [("secret", "defaultMode"), ("configMap", "defaultMode")] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut)
                    && !s.contains_key(mode_field)
                {
                    s.insert(mode_field.into(), json!(420));
                }
            }
            if let Some(e) = v.get_mut("emptyDir")
                && e.is_null()
            {
                *e = json!({});
            }
        }
    }
    let mut all_guaranteed = true;
    let mut any_resources = false;
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs {
            let cm = c.as_object_mut().expect("container is an object");
            let image = cm
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut res = cm.remove("resources").unwrap_or_else(|| json!({}));
            if !res.is_object() {
                res = json!({});
            }
            if let Some(limits) = res["limits"].as_object().cloned() {
                let requests = res["requests"].as_object().cloned().unwrap_or_default();
                let mut merged = limits.clone();
                merged.extend(requests);
                res["requests"] = Value::Object(merged);
                reorder(
                    res.as_object_mut().expect("object"),
                    &["limits", "requests"],
                );
            }
            let limits = &res["limits"];
            let requests = &res["requests"];
            if !limits.is_null() || !requests.is_null() {
                any_resources = true;
            }
            let guaranteed = ["cpu", "memory"]
                .iter()
                .all(|r| limits[r].is_string() && limits[r] == requests[r]);
            all_guaranteed &= guaranteed;
            cm.insert("resources".into(), res);
            if automount {
                let mount = json!({"name": token_volume, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
                match cm.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                    Some(m) => m.push(mount),
                    None => {
                        cm.insert("volumeMounts".into(), json!([mount]));
                    }
                }
            }
            if let Some(ports) = cm.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                }
            }
            cm.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            cm.entry("terminationMessagePolicy")
                .or_insert(json!("File"));
            let policy = if image_is_latest(&image) {
                "Always"
            } else {
                "IfNotPresent"
            };
            cm.entry("imagePullPolicy").or_insert(json!(policy));
            reorder(cm, CONTAINER_ORDER);
        }
    }
    let s = spec.as_object_mut().expect("spec is an object");
    s.entry("restartPolicy").or_insert(json!("Always"));
    s.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    s.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    let sa = s
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    s.insert("serviceAccountName".into(), json!(sa));
    s.insert("serviceAccount".into(), json!(sa));
    s.entry("securityContext").or_insert(json!({}));
    s.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    let mut tolerations = s
        .remove("tolerations")
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerations.iter().any(|t| t["key"] == key) {
            tolerations
                .push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    s.insert("tolerations".into(), json!(tolerations));
    s.entry("priority").or_insert(json!(0));
    s.entry("enableServiceLinks").or_insert(json!(true));
    s.entry("preemptionPolicy")
        .or_insert(json!("PreemptLowerPriority"));
    reorder(s, POD_SPEC_ORDER);
    pod["spec"] = spec;
    let qos = if !any_resources {
        "BestEffort"
    } else if all_guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    };
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
}

fn default_secret(secret: &mut Value) -> Result<(), ApiError> {
    let name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut data: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(d) = secret["data"].as_object() {
        for (k, v) in d {
            let s = v.as_str().unwrap_or_default();
            if base64_decode(s).is_err() {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0 (key {k:?} of {name:?})"
                )));
            }
            data.insert(k.clone(), v.clone());
        }
    }
    if let Some(sd) = secret["stringData"].as_object() {
        for (k, v) in sd {
            data.insert(
                k.clone(),
                json!(base64_encode(v.as_str().unwrap_or_default().as_bytes())),
            );
        }
    }
    let m = secret.as_object_mut().expect("object");
    m.remove("stringData");
    if !data.is_empty() {
        m.insert("data".into(), json!(data));
    }
    m.entry("type").or_insert(json!("Opaque"));
    Ok(())
}

fn default_service(shared: &Shared, svc: &mut Value) {
    let spec = &mut svc["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            let port = p["port"].clone();
            let m = p.as_object_mut().expect("port is an object");
            m.entry("protocol").or_insert(json!("TCP"));
            m.entry("targetPort").or_insert(port);
            reorder(
                m,
                &[
                    "name",
                    "protocol",
                    "appProtocol",
                    "port",
                    "targetPort",
                    "nodePort",
                ],
            );
        }
    }
    let s = spec.as_object_mut().expect("object");
    let cluster_ip = match s.get("clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => ip.to_string(),
        _ => shared.next_service_ip(),
    };
    s.insert("clusterIP".into(), json!(cluster_ip));
    s.insert("clusterIPs".into(), json!([cluster_ip]));
    s.entry("type").or_insert(json!("ClusterIP"));
    s.entry("sessionAffinity").or_insert(json!("None"));
    s.entry("ipFamilies").or_insert(json!(["IPv4"]));
    s.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    s.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
    reorder(
        s,
        &[
            "ports",
            "selector",
            "clusterIP",
            "clusterIPs",
            "type",
            "sessionAffinity",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ],
    );
    svc["status"] = json!({"loadBalancer": {}});
}

fn default_pvc(pvc: &mut Value) {
    let spec = &mut pvc["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    let s = spec.as_object_mut().expect("object");
    s.entry("volumeMode").or_insert(json!("Filesystem"));
    reorder(
        s,
        &[
            "accessModes",
            "selector",
            "resources",
            "volumeName",
            "storageClassName",
            "volumeMode",
        ],
    );
    pvc["status"] = json!({"phase": "Pending"});
}

/// The volume controller binds a new claim shortly after its creation
/// (recording 50: within 0.25 s), to a PV named `pv-N`.
fn bind_pvc(shared: Arc<Shared>, ns: String, name: String) {
    let delay = shared.config.timing.pvc_bind;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let volume = format!("pv-{}", shared.next_counter());
        let _ = shared.store().update(Resource::PersistentVolumeClaims, &ns, &name, |o| {
            let meta = o["metadata"].as_object_mut().expect("object");
            let mut ann = meta.get("annotations").and_then(Value::as_object).cloned().unwrap_or_default();
            ann.insert("pv.kubernetes.io/bind-completed".into(), json!("yes"));
            ann.insert("pv.kubernetes.io/bound-by-controller".into(), json!("yes"));
            meta.insert("annotations".into(), Value::Object(ann));
            reorder(meta, super::store::METADATA_ORDER);
            o["spec"]["volumeName"] = json!(volume);
            reorder(o["spec"].as_object_mut().expect("object"), &["accessModes", "selector", "resources", "volumeName", "storageClassName", "volumeMode"]);
            let capacity = o["spec"]["resources"]["requests"]["storage"].clone();
            o["status"] = json!({"phase": "Bound", "accessModes": o["spec"]["accessModes"].clone(), "capacity": {"storage": capacity}});
            Ok(())
        });
    });
}

/// The pvc-protection controller: a deleted claim goes once no pod uses it.
pub(super) fn release_pvc_when_unused(shared: Arc<Shared>, ns: String, name: String) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut store = shared.store();
            if store
                .get(Resource::PersistentVolumeClaims, &ns, &name)
                .is_none()
            {
                return;
            }
            let in_use = store.iter(Resource::Pods, Some(&ns)).any(|p| {
                p["spec"]["volumes"].as_array().is_some_and(|vs| {
                    vs.iter()
                        .any(|v| v["persistentVolumeClaim"]["claimName"] == name.as_str())
                })
            });
            if !in_use {
                let _ = store.update(Resource::PersistentVolumeClaims, &ns, &name, |o| {
                    o["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("finalizers"));
                    Ok(())
                });
                let _ = store.remove(Resource::PersistentVolumeClaims, &ns, &name);
                return;
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Garbage collection

/// The garbage collector (background propagation): objects owned by `uid` are
/// deleted shortly after their owner (recording 70: about 0.05 s).
pub(super) fn collect_dependents(shared: &Arc<Shared>, uid: &str) {
    if uid.is_empty() {
        return;
    }
    let shared = shared.clone();
    let uid = uid.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let dependents: Vec<(Resource, String, String)> = {
            let store = shared.store();
            [
                Resource::Pods,
                Resource::Secrets,
                Resource::Services,
                Resource::PersistentVolumeClaims,
            ]
            .into_iter()
            .flat_map(|r| store.iter(r, None).map(move |o| (r, o)))
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|(r, o)| {
                (
                    r,
                    o["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
        };
        for (r, ns, name) in dependents {
            let _ = api::delete(&shared, r, &ns, &name, None);
        }
    });
}

/// The garbage collector also deletes an object whose owners (of kinds this
/// fake stores) do not exist: an owner reference with a wrong uid is a real
/// bug that a real cluster punishes by deleting the object.
fn collect_if_orphaned(shared: Arc<Shared>, resource: Resource, ns: String, obj: Value) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let refs = obj["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let orphaned = {
            let store = shared.store();
            let known: Vec<&Value> = refs
                .iter()
                .filter(|r| {
                    r["apiVersion"] == "v1"
                        && Resource::from_plural(&format!(
                            "{}s",
                            r["kind"].as_str().unwrap_or_default().to_lowercase()
                        ))
                        .is_some()
                })
                .collect();
            !known.is_empty()
                && known.len() == refs.len()
                && known.iter().all(|r| {
                    let kind = r["kind"].as_str().unwrap_or_default();
                    let res = match kind {
                        "PersistentVolumeClaim" => Some(Resource::PersistentVolumeClaims),
                        other => Resource::from_plural(&format!("{}s", other.to_lowercase())),
                    };
                    res.is_none_or(|res| {
                        store
                            .get(res, &ns, r["name"].as_str().unwrap_or_default())
                            .is_none_or(|o| o["metadata"]["uid"] != r["uid"])
                    })
                })
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let still_same = shared
            .store()
            .get(resource, &ns, name)
            .is_some_and(|o| o["metadata"]["uid"] == obj["metadata"]["uid"]);
        if orphaned && still_same {
            let _ = api::delete(&shared, resource, &ns, name, None);
        }
    });
}

// ---------------------------------------------------------------------------
// Pod Security admission

/// Checks a pod against the namespace's `pod-security.kubernetes.io/enforce`
/// level (403 as recordings 60 and 62) and returns `warn` level warnings (64).
fn pod_security(
    shared: &Shared,
    ns: &str,
    name: &str,
    pod: &Value,
) -> Result<Vec<String>, ApiError> {
    let labels = shared.namespace_labels(ns);
    let mut warnings = Vec::new();
    if let Some(level) = labels.get("pod-security.kubernetes.io/enforce") {
        let violations = psa_violations(level, pod);
        if !violations.is_empty() {
            return Err(ApiError::forbidden(
                "pods",
                Some(name),
                format!(
                    "violates PodSecurity \"{level}:latest\": {}",
                    violations.join(", ")
                ),
            ));
        }
    }
    if let Some(level) = labels.get("pod-security.kubernetes.io/warn") {
        let violations = psa_violations(level, pod);
        if !violations.is_empty() {
            warnings.push(format!(
                "would violate PodSecurity \"{level}:latest\": {}",
                violations.join(", ")
            ));
        }
    }
    Ok(warnings)
}

fn psa_violations(level: &str, pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let names = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        containers
            .iter()
            .filter(|c| pred(c))
            .map(|c| format!("\"{}\"", c["name"].as_str().unwrap_or_default()))
            .collect()
    };
    let plural = |n: &[String]| {
        if n.len() == 1 {
            "container"
        } else {
            "containers"
        }
    };
    let mut v = Vec::new();
    if level == "baseline" || level == "restricted" {
        let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
            .iter()
            .filter(|f| spec[**f].as_bool() == Some(true))
            .map(|f| format!("{f}=true"))
            .collect();
        if !host.is_empty() {
            v.push(format!("host namespaces ({})", host.join(", ")));
        }
        let priv_ = names(&|c| c["securityContext"]["privileged"].as_bool() == Some(true));
        if !priv_.is_empty() {
            v.push(format!(
                "privileged ({} {} must not set securityContext.privileged=true)",
                plural(&priv_),
                priv_.join(", ")
            ));
        }
        let host_path: Vec<String> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|vol| vol.get("hostPath").is_some())
            .map(|vol| format!("\"{}\"", vol["name"].as_str().unwrap_or_default()))
            .collect();
        if !host_path.is_empty() {
            let word = if host_path.len() == 1 {
                "volume"
            } else {
                "volumes"
            };
            v.push(format!(
                "hostPath volumes ({word} {})",
                host_path.join(", ")
            ));
        }
    }
    if level == "restricted" {
        let ape =
            names(&|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false));
        if !ape.is_empty() {
            v.push(format!(
                "allowPrivilegeEscalation != false ({} {} must set securityContext.allowPrivilegeEscalation=false)",
                plural(&ape),
                ape.join(", ")
            ));
        }
        let caps = names(&|c| {
            !c["securityContext"]["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        });
        if !caps.is_empty() {
            v.push(format!(
                "unrestricted capabilities ({} {} must set securityContext.capabilities.drop=[\"ALL\"])",
                plural(&caps),
                caps.join(", ")
            ));
        }
        let pod_nonroot = spec["securityContext"]["runAsNonRoot"].as_bool() == Some(true);
        let nonroot = names(&|c| {
            !pod_nonroot && c["securityContext"]["runAsNonRoot"].as_bool() != Some(true)
        });
        if !nonroot.is_empty() {
            v.push(format!(
                "runAsNonRoot != true (pod or {} {} must set securityContext.runAsNonRoot=true)",
                plural(&nonroot),
                nonroot.join(", ")
            ));
        }
        let pod_seccomp = spec["securityContext"]["seccompProfile"]["type"].as_str();
        let ok = |t: Option<&str>| matches!(t, Some("RuntimeDefault") | Some("Localhost"));
        let seccomp = names(&|c| {
            !ok(pod_seccomp) && !ok(c["securityContext"]["seccompProfile"]["type"].as_str())
        });
        if !seccomp.is_empty() {
            v.push(format!("seccompProfile (pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")", plural(&seccomp), seccomp.join(", ")));
        }
    }
    v
}

// ---------------------------------------------------------------------------
// replace and patch

/// PUT: replaces spec/metadata the client owns; 409 on a stale resourceVersion.
pub(super) fn replace(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: &str,
    name: &str,
    body: Value,
) -> Result<Value, ApiError> {
    let mut store = shared.store();
    store.update(resource, ns, name, |o| {
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
            && rv != o["metadata"]["resourceVersion"].as_str().unwrap_or_default()
        {
            return Err(ApiError::conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        apply_client_fields(resource, o, &body);
        Ok(())
    })
}

/// Copies what a client may change: labels, annotations, ownerReferences,
/// finalizers, and (except for pods, whose spec is mostly immutable) spec and data.
fn apply_client_fields(resource: Resource, o: &mut Value, body: &Value) {
    for key in ["labels", "annotations", "ownerReferences", "finalizers"] {
        match body["metadata"].get(key) {
            Some(v) if !v.is_null() => o["metadata"][key] = v.clone(),
            _ => {
                o["metadata"].as_object_mut().map(|m| m.remove(key));
            }
        }
    }
    reorder(
        o["metadata"].as_object_mut().expect("object"),
        super::store::METADATA_ORDER,
    );
    match resource {
        Resource::Secrets => {
            let mut b = body.clone();
            let _ = default_secret(&mut b);
            o["data"] = b["data"].clone();
        }
        Resource::Pods => {
            // Only image and activeDeadlineSeconds may change on a pod.
            if let Some(ads) = body["spec"].get("activeDeadlineSeconds") {
                o["spec"]["activeDeadlineSeconds"] = ads.clone();
            }
        }
        _ => {
            if body["spec"].is_object() {
                let mut spec = body["spec"].clone();
                if let (Some(m), Some(old)) = (spec.as_object_mut(), o["spec"].as_object()) {
                    for (k, v) in old {
                        m.entry(k.clone()).or_insert(v.clone());
                    }
                }
                o["spec"] = spec;
            }
        }
    }
}

/// JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// JSON patch (RFC 6902): add, remove, replace, test.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    fn unescape(s: &str) -> String {
        s.replace("~1", "/").replace("~0", "~")
    }
    for op in ops.as_array().ok_or("json patch must be an array")? {
        let path = op["path"].as_str().ok_or("missing path")?;
        let segs: Vec<String> = path.split('/').skip(1).map(unescape).collect();
        let (last, parents) = segs.split_last().ok_or("empty path")?;
        let mut cur = &mut *target;
        for s in parents {
            cur = match cur {
                Value::Object(m) => m.get_mut(s).ok_or(format!("path {path} not found"))?,
                Value::Array(a) => a
                    .get_mut(s.parse::<usize>().map_err(|e| e.to_string())?)
                    .ok_or(format!("path {path} not found"))?,
                _ => return Err(format!("path {path} not found")),
            };
        }
        let kind = op["op"].as_str().unwrap_or_default();
        match (kind, cur) {
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                if i > a.len() {
                    return Err("index out of range".into());
                }
                a.insert(i, op["value"].clone());
            }
            ("replace", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                *a.get_mut(i).ok_or("index out of range")? = op["value"].clone();
            }
            ("remove", Value::Object(m)) => {
                m.remove(last)
                    .ok_or(format!("unable to remove nonexistent key: {last}"))?;
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                if i >= a.len() {
                    return Err("index out of range".into());
                }
                a.remove(i);
            }
            ("test", Value::Object(m)) => {
                if m.get(last) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            _ => {
                return Err(format!(
                    "unsupported json patch operation {kind:?} at {path}"
                ));
            }
        }
    }
    Ok(())
}

/// PATCH with merge, strategic-merge (treated as merge: maps merge, lists are
/// replaced, which is exact for labels and annotations), JSON patch, or apply.
#[allow(clippy::too_many_arguments)]
pub(super) fn patch(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: &str,
    name: &str,
    content_type: &str,
    raw: &[u8],
    manager: &str,
    q: &std::collections::HashMap<String, String>,
) -> Result<Value, ApiError> {
    let body: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    if ct == "application/apply-patch+yaml" && shared.store().get(resource, ns, name).is_none() {
        let mut obj = body.clone();
        obj["metadata"]["name"] = json!(name);
        let manager = q.get("fieldManager").map(String::as_str).unwrap_or(manager);
        return create(shared, resource, ns, obj, manager).map(|(o, _)| o);
    }
    let mut store = shared.store();
    store.update(resource, ns, name, |o| {
        let mut next = o.clone();
        match ct {
            "application/json-patch+json" => json_patch(&mut next, &body).map_err(|e| ApiError::new_invalid_patch(&e))?,
            "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
                let mut b = body.clone();
                if let Some(m) = b.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                        for k in ["uid", "resourceVersion", "creationTimestamp", "namespace", "name", "managedFields"] {
                            meta.remove(k);
                        }
                    }
                }
                merge_patch(&mut next, &b);
            }
            other => {
                return Err(ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType".into(),
                    message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"),
                    details: None,
                    retry_after: None,
                });
            }
        }
        // The server owns identity; a patch cannot move or rename an object.
        for k in ["name", "namespace", "uid", "creationTimestamp"] {
            next["metadata"][k] = o["metadata"][k].clone();
        }
        if resource == Resource::Secrets {
            let _ = default_secret(&mut next);
        }
        reorder(next["metadata"].as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?, super::store::METADATA_ORDER);
        *o = next;
        Ok(())
    })
}

impl ApiError {
    fn new_invalid_patch(msg: &str) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid".into(),
            message: msg.to_string(),
            details: None,
            retry_after: None,
        }
    }
}
