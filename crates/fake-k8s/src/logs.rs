//! Container logs: the buffer the kubelet writes a container's output into
//! (one entry per line, timestamped when it was read), and
//! `GET pods/{name}/log` with `container`, `follow`, `timestamps`,
//! `sinceTime` (cut to whole seconds, inclusive), `sinceSeconds`,
//! `tailLines` and `limitBytes`, plus the 400/204/404 answers of the
//! recordings for containers that have not started, pods on no node, and
//! ambiguous or unknown container names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::Shared;
use super::api::ApiError;
use super::store::Resource;

/// One line of container output. `newline` is false only for a last line the
/// process ended without a newline (recording 44 gives it back without one).
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub time: DateTime<Utc>,
    pub text: Vec<u8>,
    pub newline: bool,
}

/// The output of one container: appended by the kubelet, read by log requests.
pub struct LogBuffer {
    lines: Mutex<Vec<LogLine>>,
    /// (number of lines, finished) — followers wait on changes.
    state: watch::Sender<(usize, bool)>,
}

impl Default for LogBuffer {
    fn default() -> Self {
        LogBuffer {
            lines: Mutex::new(Vec::new()),
            state: watch::channel((0, false)).0,
        }
    }
}

impl LogBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LogLine>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, line: LogLine) {
        let mut lines = self.lock();
        lines.push(line);
        let n = lines.len();
        drop(lines);
        self.state.send_modify(|s| s.0 = n);
    }

    /// No more output will come (the container has terminated).
    pub fn finish(&self) {
        self.state.send_modify(|s| s.1 = true);
    }

    pub fn lines(&self) -> Vec<LogLine> {
        self.lock().clone()
    }

    fn from(&self, idx: usize) -> Vec<LogLine> {
        self.lock()
            .get(idx..)
            .map(<[LogLine]>::to_vec)
            .unwrap_or_default()
    }

    /// The whole output as the plain log endpoint gives it.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&render(&self.lines(), &LogOptions::default(), Utc::now()))
            .into_owned()
    }
}

/// Log buffers by pod uid and container name (a new pod with the same name
/// must not see the old one's output).
#[derive(Default)]
pub struct LogStore {
    buffers: Mutex<HashMap<(String, String), Arc<LogBuffer>>>,
}

impl LogStore {
    pub fn buffer(&self, uid: &str, container: &str) -> Arc<LogBuffer> {
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((uid.to_string(), container.to_string()))
            .or_default()
            .clone()
    }
}

/// The query options of a log request that shape its output.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub timestamps: bool,
    pub since_time: Option<DateTime<Utc>>,
    pub since_seconds: Option<i64>,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    fn parse(q: &HashMap<String, String>) -> Result<LogOptions, ApiError> {
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
        let num = |k: &str| -> Result<Option<i64>, ApiError> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| ApiError::bad_request(format!("{k}: Invalid value: {v:?}")))
                })
                .transpose()
        };
        let since_time = match q.get("sinceTime") {
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        ApiError::bad_request(format!("sinceTime: Invalid value: {t:?}: {e}"))
                    })?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        let opts = LogOptions {
            timestamps: flag("timestamps"),
            since_time,
            since_seconds: num("sinceSeconds")?,
            tail_lines: num("tailLines")?.map(|n| n.max(0) as usize),
            limit_bytes: num("limitBytes")?.map(|n| n.max(0) as usize),
        };
        if opts.since_time.is_some() && opts.since_seconds.is_some() {
            return Err(ApiError::bad_request(
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ));
        }
        Ok(opts)
    }

    /// The earliest time a line may have. `sinceTime` travels as a
    /// `metav1.Time`, which holds whole seconds, so its fraction is dropped
    /// (recordings 41, 41b and 41c all start at line 10).
    fn since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(t) = self.since_time {
            return Utc.timestamp_opt(t.timestamp(), 0).single();
        }
        self.since_seconds
            .map(|s| now - chrono::Duration::seconds(s))
    }
}

/// A line as the log endpoint writes it.
pub fn format_line(line: &LogLine, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.text.len() + 32);
    if timestamps {
        // The kubelet's fixed-width RFC3339Nano: always 9 fractional digits.
        out.extend_from_slice(
            line.time
                .format("%Y-%m-%dT%H:%M:%S%.9fZ ")
                .to_string()
                .as_bytes(),
        );
    }
    out.extend_from_slice(&line.text);
    if line.newline {
        out.push(b'\n');
    }
    out
}

/// The bytes a non-follow log request answers for `lines` (since, tail, limit).
pub fn render(lines: &[LogLine], opts: &LogOptions, now: DateTime<Utc>) -> Vec<u8> {
    let since = opts.since(now);
    let mut selected: Vec<&LogLine> = lines
        .iter()
        .filter(|l| since.is_none_or(|s| l.time >= s))
        .collect();
    if let Some(n) = opts.tail_lines {
        let skip = selected.len().saturating_sub(n);
        selected.drain(..skip);
    }
    let mut out: Vec<u8> = selected
        .iter()
        .flat_map(|l| format_line(l, opts.timestamps))
        .collect();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// The API server's answer to a log request while the node's kubelet is down:
/// a 500 Status naming the failed dial, with no reason and no details. The
/// kubelet URL carries the log options sorted by name, as Go's
/// `url.Values.Encode` writes them.
fn kubelet_unreachable(
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> ApiError {
    let mut params: Vec<(&str, String)> = Vec::new();
    for key in [
        "follow",
        "limitBytes",
        "previous",
        "sinceSeconds",
        "sinceTime",
        "tailLines",
        "timestamps",
    ] {
        let Some(v) = q.get(key) else { continue };
        let v = match key {
            "follow" | "previous" | "timestamps" if v == "true" || v == "1" => "true".to_string(),
            "follow" | "previous" | "timestamps" => continue,
            // metav1.Time: whole seconds, UTC.
            "sinceTime" => match DateTime::parse_from_rfc3339(v) {
                Ok(t) => t
                    .with_timezone(&Utc)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
                    .replace(':', "%3A"),
                Err(_) => continue,
            },
            _ => v.clone(),
        };
        params.push((key, v));
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let host = super::kubelet::HOST_IP;
    let mut e = ApiError::internal("");
    e.reason = String::new();
    e.details = None;
    e.message = format!(
        "Get \"https://{host}:10250/containerLogs/{ns}/{pod}/{container}?{}\": dial tcp {host}:10250: connect: connection refused",
        query.join("&")
    );
    e
}

fn waiting_message(container: &str, pod: &str, reason: &str) -> String {
    // The kubelet words image pull trouble in its own way (recording 47).
    let reason = match reason {
        "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image",
        other => other,
    };
    format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

pub(super) async fn serve_log(
    shared: Arc<Shared>,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pod = shared
        .store()
        .get(Resource::Pods, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(Resource::Pods, name))?;
    let containers = names(&pod["spec"]["containers"]);
    let init = names(&pod["spec"]["initContainers"]);
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(c) || init.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            return Err(ApiError::bad_request(msg));
        }
    };
    let opts = LogOptions::parse(q)?;
    let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
    if q.get("previous").is_some_and(|v| v == "true" || v == "1") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    if !pod["spec"]["nodeName"].is_string() {
        // No kubelet to ask: the server answers 204 with no body (recording 47c).
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][*k].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == container.as_str());
    let state = status
        .as_ref()
        .map(|s| s["state"].clone())
        .unwrap_or(Value::Null);
    if state.get("running").is_none() && state.get("terminated").is_none() {
        let reason = state["waiting"]["reason"]
            .as_str()
            .unwrap_or("ContainerCreating");
        return Err(ApiError::bad_request(waiting_message(
            &container, name, reason,
        )));
    }
    if shared.kubelet.is_down() {
        // The API server checked the pod; now it dials the kubelet and fails
        // (recording 80, b-follow-while-kubelet-down).
        return Err(kubelet_unreachable(ns, name, &container, q));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let buffer = shared.logs.buffer(uid, &container);
    let mut down = shared.kubelet.subscribe_down();
    let cut_after = if follow {
        shared.faults.take_log_cut(name)
    } else {
        None
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut state = buffer.state.subscribe();
        let now = Utc::now();
        let since = opts.since(now);
        let mut sent_lines = 0usize;
        let mut budget = opts.limit_bytes.unwrap_or(usize::MAX);
        // Take the lines present now, then (when following) everything after.
        let (present, finished) = {
            let s = *state.borrow_and_update();
            (buffer.from(0), s.1)
        };
        let mut next = present.len();
        let mut first: Vec<LogLine> = present;
        first.retain(|l| since.is_none_or(|s| l.time >= s));
        if let Some(n) = opts.tail_lines {
            let skip = first.len().saturating_sub(n);
            first.drain(..skip);
        }
        let mut pending = first;
        let mut done = finished || !follow;
        loop {
            if *down.borrow() {
                // The kubelet died: the API server ends the proxied stream as
                // if the log were over, although the container runs on
                // (recording 80, a-follow-open-when-kubelet-dies).
                return;
            }
            for line in pending.drain(..) {
                if cut_after.is_some_and(|n| sent_lines >= n) {
                    return;
                }
                let mut bytes = format_line(&line, opts.timestamps);
                if bytes.len() > budget {
                    bytes.truncate(budget);
                }
                budget -= bytes.len();
                if !bytes.is_empty() && tx.send(Bytes::from(bytes)).await.is_err() {
                    return;
                }
                sent_lines += 1;
                if budget == 0 {
                    return;
                }
            }
            if done {
                return;
            }
            if cut_after.is_some_and(|n| sent_lines >= n) {
                return;
            }
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = down.wait_for(|d| *d) => return,
            }
            let s = *state.borrow_and_update();
            pending = buffer.from(next);
            next += pending.len();
            pending.retain(|l| since.is_none_or(|t| l.time >= t));
            done = s.1 && buffer.from(next).is_empty();
        }
    });
    let mut resp = Response::new(Body::from_stream(super::watch::receiver_stream(rx)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}
