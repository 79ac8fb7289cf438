//! Helpers of the tests of the fake (`k8s_fake_cluster`, `k8s_fake_conformance`): the
//! recordings on disk, raw requests to the fake's router, reading streamed bodies, and
//! normalising volatile values (uids, timestamps, resourceVersions) to checked placeholders.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, Request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use piculet_fake_k8s::FakeCluster;

/// The recordings: `tests/k8s-wire` of this repository (a copy of the project's shared
/// recordings, kept here so that a clean clone runs every test), or `PICULET_K8S_WIRE`.
pub fn wire_dir() -> PathBuf {
    if let Ok(p) = std::env::var("PICULET_K8S_WIRE") {
        return PathBuf::from(p);
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k8s-wire"))
}

/// A recorded request: method, path with query, headers, body.
pub struct RecordedRequest {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A recorded answer: status code, headers, raw body.
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("recorded body is JSON")
    }

    /// Each line of a recorded watch stream as JSON.
    pub fn events(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect()
    }
}

pub fn load(folder: &str) -> (RecordedRequest, RecordedResponse) {
    let dir = wire_dir().join(folder);
    let req = std::fs::read_to_string(dir.join("request.txt"))
        .unwrap_or_else(|e| panic!("{folder}: {e}"));
    let (head, body) = req.split_once("\n\n").unwrap_or((&req, ""));
    let mut lines = head.lines();
    let first: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = RecordedRequest {
        method: first[0].to_string(),
        uri: first[1].to_string(),
        headers,
        body: body.trim_end_matches('\n').as_bytes().to_vec(),
    };
    let status = std::fs::read_to_string(dir.join("status.txt")).expect("status.txt");
    let mut slines = status.lines();
    let code = slines
        .next()
        .unwrap_or_default()
        .split(' ')
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let headers = slines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = std::fs::read(dir.join("response")).unwrap_or_default();
    (
        request,
        RecordedResponse {
            status: code,
            headers,
            body,
        },
    )
}

/// An answer of the fake.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body length when the fake sends `Content-Length`; None when chunked.
    pub exact_len: Option<u64>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn events(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect()
    }
}

fn build(method: &str, uri: &str, headers: &[(String, String)], body: Vec<u8>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("authorization") && v.contains("<redacted>") {
            continue;
        }
        b = b.header(k, v);
    }
    b.body(Body::from(body)).expect("request")
}

/// Sends a request to the fake's router and reads the whole answer.
pub async fn send(
    cluster: &FakeCluster,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    send_timed(cluster, method, uri, headers, body).await.0
}

/// Like `send`, also giving each chunk's arrival time after the request.
pub async fn send_timed(
    cluster: &FakeCluster,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (Answer, Vec<(Duration, Vec<u8>)>) {
    let started = Instant::now();
    let resp = cluster
        .router()
        .oneshot(build(method, uri, headers, body.to_vec()))
        .await
        .expect("infallible");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let exact_len = body.size_hint().exact();
    let mut all = Vec::new();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Ok(data) = frame.into_data() {
            chunks.push((started.elapsed(), data.to_vec()));
            all.extend_from_slice(&data);
        }
    }
    (
        Answer {
            status,
            headers,
            exact_len,
            body: all,
        },
        chunks,
    )
}

/// Sends a recorded request as is.
pub async fn replay(cluster: &FakeCluster, req: &RecordedRequest) -> Answer {
    send(cluster, &req.method, &req.uri, &req.headers, &req.body).await
}

pub fn json_headers() -> Vec<(String, String)> {
    vec![
        ("User-Agent".into(), "kube-wire-recorder/1.0".into()),
        ("Accept".into(), "application/json".into()),
        ("Content-Type".into(), "application/json".into()),
    ]
}

/// Checks what every answer shares with the recording: status code,
/// Content-Type, framing (Content-Length or chunked), the fixed headers.
pub fn assert_envelope(folder: &str, ours: &Answer, rec: &RecordedResponse) {
    assert_eq!(
        ours.status,
        rec.status,
        "{folder}: status; body {}",
        String::from_utf8_lossy(&ours.body)
    );
    assert_eq!(
        ours.header("content-type"),
        rec.header("Content-Type"),
        "{folder}: Content-Type"
    );
    match rec.header("Content-Length") {
        // Lengths differ with managedFields detail; the framing rule must hold.
        Some(len) if len.parse::<usize>().unwrap_or(0) <= 2048 => {
            assert_eq!(
                ours.exact_len,
                Some(ours.body.len() as u64),
                "{folder}: Content-Length"
            );
            assert!(
                ours.body.len() <= 2048,
                "{folder}: over 2048 bytes must be chunked"
            );
        }
        Some(len) => panic!("{folder}: recorded Content-Length {len} over 2048"),
        None if rec.header("Transfer-Encoding") == Some("chunked") => {
            assert_eq!(ours.exact_len, None, "{folder}: should be chunked")
        }
        None => assert_eq!(ours.exact_len.unwrap_or(0), 0, "{folder}: empty body"),
    }
    assert_eq!(
        ours.header("cache-control"),
        rec.header("Cache-Control"),
        "{folder}: Cache-Control"
    );
    assert!(
        ours.header("audit-id").is_some_and(is_uuid),
        "{folder}: Audit-Id"
    );
    for h in [
        "X-Kubernetes-Pf-Flowschema-Uid",
        "X-Kubernetes-Pf-Prioritylevel-Uid",
        "X-Content-Type-Options",
        "Warning",
    ] {
        assert_eq!(
            ours.header(h).is_some(),
            rec.header(h).is_some(),
            "{folder}: header {h} presence"
        );
    }
    assert!(
        ours.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{folder}: Date"
    );
}

pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn is_ts(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z') && s.len() == 20
}

/// Replaces volatile values by placeholders after checking their shape, so
/// two objects compare on what matters. managedFields keep only who wrote
/// what (manager, operation, subresource).
pub fn normalize(v: &Value) -> Value {
    fn walk(key: &str, v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let nv = if k == "managedFields" {
                            Value::Array(
                                v.as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|e| {
                                        serde_json::json!({"manager": e["manager"], "operation": e["operation"], "subresource": e["subresource"]})
                                    })
                                    .collect(),
                            )
                        } else {
                            walk(k, v)
                        };
                        (k.clone(), nv)
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(key, x)).collect()),
            Value::String(s) => Value::String(match key {
                "uid" => {
                    assert!(is_uuid(s), "uid shape: {s}");
                    "<uid>".into()
                }
                "resourceVersion" => {
                    assert!(s.parse::<u64>().is_ok(), "resourceVersion shape: {s}");
                    "<rv>".into()
                }
                "creationTimestamp" | "deletionTimestamp" | "lastTransitionTime" | "startTime" | "startedAt"
                | "finishedAt" | "time" => {
                    assert!(is_ts(s), "{key} shape: {s}");
                    "<ts>".into()
                }
                "containerID" => {
                    let hex = s.strip_prefix("containerd://").unwrap_or_else(|| panic!("containerID shape: {s}"));
                    assert!(hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()), "containerID: {s}");
                    "<cid>".into()
                }
                "podIP" | "ip" => {
                    assert!(s.parse::<std::net::Ipv4Addr>().is_ok(), "ip shape: {s}");
                    "<ip>".into()
                }
                "volumeName" if s.starts_with("pv-") => "<pv>".into(),
                _ if s.starts_with("kube-api-access-") && s.len() == 21 => "kube-api-access-<x>".into(),
                _ => s.clone(),
            }),
            other => other.clone(),
        }
    }
    walk("", v)
}

/// A one-line digest of a watch event (as the recordings' summary.txt):
/// type, phase, pod reason, deletion grace, node, conditions, container states.
pub fn digest(ev: &Value) -> String {
    let o = &ev["object"];
    let ty = ev["type"].as_str().unwrap_or_default();
    if ty == "BOOKMARK" || ty == "ERROR" {
        return format!("{ty} {}", normalize(o));
    }
    let s = &o["status"];
    let conds: Vec<String> = s["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}/{}",
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    let cs: Vec<String> = s["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let st = &c["state"];
            let (k, v) = st
                .as_object()
                .and_then(|m| m.iter().next())
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default();
            format!(
                "{}:{k}:{}:{}:ready={}:started={}",
                c["name"].as_str().unwrap_or(""),
                v["reason"].as_str().unwrap_or(""),
                v["exitCode"],
                c["ready"],
                c["started"]
            )
        })
        .collect();
    format!(
        "{ty} phase={} reason={} del={} grace={} node={} ip={} conds=[{}] cs=[{}]",
        s["phase"].as_str().unwrap_or(""),
        s["reason"].as_str().unwrap_or(""),
        o["metadata"]["deletionTimestamp"].is_string(),
        o["metadata"]["deletionGracePeriodSeconds"],
        o["spec"]["nodeName"].as_str().unwrap_or(""),
        s["podIP"].is_string(),
        conds.join(","),
        cs.join(",")
    )
}

/// The first path where two JSON values differ, for readable failures.
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: ours {u:?} recorded {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: ours {a} recorded {b}")),
    }
}
