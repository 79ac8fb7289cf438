//! `?watch=1` streams: newline-delimited JSON events (ADDED, MODIFIED,
//! DELETED, BOOKMARK, ERROR) with the real server's rules — a watch from a
//! resourceVersion is exclusive and replays the history after it; one without
//! a resourceVersion (or with "0") starts with a synthetic ADDED per existing
//! object; a too-old resourceVersion answers 200 then one ERROR 410 event;
//! bookmarks come shortly before `timeoutSeconds`; selectors turn an object
//! leaving the selection into DELETED and one entering it into ADDED.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::api::{ApiError, selectors};
use super::store::{Change, EventType, FieldSelector, LabelSelector, Resource};

/// How long a watch without `timeoutSeconds` stays open (the real server
/// picks 30–60 minutes at random).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The real server's bookmark period for long watches.
const BOOKMARK_PERIOD: Duration = Duration::from_secs(60);

/// Signals the test side sends to every open watch.
#[derive(Clone, Copy, Debug)]
pub enum WatchSignal {
    /// End with an ERROR 410 Expired event, as when the watch cache drops the
    /// watcher's position; the client must relist.
    Expire,
    /// End the stream without an error (as a server-side timeout does).
    Close,
}

struct Filter {
    resource: Resource,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event a change becomes for this watch, if any.
    fn translate(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.resource != self.resource
            || self.ns.as_ref().is_some_and(|ns| *ns != change.namespace)
        {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
        let kind = match change.event {
            EventType::Added if now => "ADDED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            EventType::Deleted if before || now => "DELETED",
            _ => return None,
        };
        Some((kind, change.object.clone()))
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn expired_line(asked: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::gone(format!("too old resource version: {asked} ({oldest})")).to_status();
    line("ERROR", &status)
}

fn bookmark(resource: Resource, rv: u64) -> Value {
    let meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    match resource {
        Resource::Pods => {
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": {"containers": null}, "status": {}})
        }
        Resource::Services => {
            json!({"kind": "Service", "apiVersion": "v1", "metadata": meta, "spec": {}, "status": {"loadBalancer": {}}})
        }
        Resource::PersistentVolumeClaims => {
            json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "metadata": meta, "spec": {"resources": {}}, "status": {}})
        }
        other => json!({"kind": other.kind(), "apiVersion": "v1", "metadata": meta}),
    }
}

pub(super) async fn serve_watch(
    shared: Arc<Shared>,
    resource: Resource,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(q)?;
    let filter = Filter {
        resource,
        ns,
        labels,
        fields,
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let asked_rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
            ))
        })?),
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut signals = shared.watch_signals.subscribe();
    // Take the starting point and the live feed under one lock.
    let start = {
        let store = shared.store();
        match asked_rv {
            Some(rv) => match store.subscribe_from(rv) {
                Ok((replay, live)) => Ok((
                    replay
                        .iter()
                        .filter_map(|c| filter.translate(c))
                        .collect::<Vec<_>>(),
                    live,
                )),
                Err(oldest) => Err((rv, oldest)),
            },
            None => {
                let initial: Vec<(&'static str, Value)> = store
                    .list(resource, filter.ns.as_deref())
                    .into_iter()
                    .filter(|o| filter.matches(o))
                    .map(|o| ("ADDED", o))
                    .collect();
                Ok((initial, store.subscribe()))
            }
        }
    };

    tokio::spawn(async move {
        let (initial, mut live) = match start {
            Ok(s) => s,
            Err((asked, oldest)) => {
                let _ = tx.send(expired_line(asked, oldest)).await;
                return;
            }
        };
        for (kind, obj) in initial {
            if tx.send(line(kind, &obj)).await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        let deadline = started + timeout;
        // Bookmarks at about 2.2 s and 1.1 s before the timeout (recording 11),
        // and once a minute in long watches.
        let mut bookmark_times: Vec<Instant> = Vec::new();
        if bookmarks {
            let mut t = started + BOOKMARK_PERIOD;
            while t + Duration::from_millis(2200) < deadline {
                bookmark_times.push(t);
                t += BOOKMARK_PERIOD;
            }
            // A short watch (3 s in recording 14) gets none.
            for before in [2200u64, 1100]
                .into_iter()
                .filter(|_| timeout >= Duration::from_secs(5))
            {
                if let Some(t) = deadline.checked_sub(Duration::from_millis(before))
                    && t > started
                {
                    bookmark_times.push(t);
                }
            }
        }
        let mut next_bookmark = bookmark_times.into_iter();
        let mut bookmark_at = next_bookmark.next();
        loop {
            let bookmark_sleep = async {
                match bookmark_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        if let Some((kind, obj)) = filter.translate(&change)
                            && tx.send(line(kind, &obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let oldest = shared.store().history_start();
                        let _ = tx.send(expired_line(oldest.saturating_sub(1), oldest)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                signal = signals.recv() => match signal {
                    Ok(WatchSignal::Expire) => {
                        let (asked, oldest) = {
                            let store = shared.store();
                            (store.history_start().saturating_sub(1), store.history_start())
                        };
                        let _ = tx.send(expired_line(asked, oldest)).await;
                        return;
                    }
                    Ok(WatchSignal::Close) | Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(_)) => {}
                },
                _ = bookmark_sleep => {
                    let rv = shared.store().current_rv();
                    if tx.send(line("BOOKMARK", &bookmark(filter.resource, rv))).await.is_err() {
                        return;
                    }
                    bookmark_at = next_bookmark.next();
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });

    let mut resp = Response::new(Body::from_stream(receiver_stream(rx)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A tokio receiver as a body stream; the body ends when the sender is dropped.
pub fn receiver_stream(
    rx: mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
    )
}
