//! The fake held to the recordings of a real v1.28 API server and kubelet in
//! `tests/k8s-wire`: each test sends a recorded request (or replays the
//! scenario) and compares status, headers, framing and body, volatile values
//! by shape. Watch scenarios compare the sequence of event digests.

use crate::k8s_common as common;
use piculet_fake_k8s as fake_k8s;

use std::time::Duration;

use common::*;
use fake_k8s::logs::{LogLine, LogOptions, render};
use fake_k8s::{FakeCluster, FakeConfig, KubeletTiming, Resource};
use serde_json::{Value, json};

fn create_body(folder: &str) -> Vec<u8> {
    load(folder).0.body
}

async fn post_pod(cluster: &FakeCluster, ns: &str, body: &[u8]) -> Answer {
    let a = send(
        cluster,
        "POST",
        &format!("/api/v1/namespaces/{ns}/pods"),
        &json_headers(),
        body,
    )
    .await;
    assert_eq!(
        a.status,
        201,
        "create: {}",
        String::from_utf8_lossy(&a.body)
    );
    a
}

async fn wait_phase(cluster: &FakeCluster, ns: &str, name: &str, phase: &str) -> Value {
    cluster
        .wait_for_pod(ns, name, Duration::from_secs(20), |p| {
            p["status"]["phase"] == phase && p["status"]["podIP"].is_string()
        })
        .await
        .unwrap_or_else(|| panic!("{name} never reached {phase}"))
}

async fn wait_running(cluster: &FakeCluster, ns: &str, name: &str) -> Value {
    cluster
        .wait_for_pod(ns, name, Duration::from_secs(10), |p| {
            p["status"]["containerStatuses"][0]["state"]["running"].is_object()
                && p["status"]["phase"] == "Running"
        })
        .await
        .unwrap_or_else(|| panic!("{name} never ran"))
}

/// Compares JSON bodies after normalisation, naming the first difference.
fn assert_same_json(folder: &str, ours: &Value, recorded: &Value) {
    let (a, b) = (normalize(ours), normalize(recorded));
    if a != b {
        panic!(
            "{folder}: bodies differ at {}",
            first_difference(&a, &b, "").unwrap_or_default()
        );
    }
}

// ---------------------------------------------------------------------------
// 01–08: create, conflicts, validation, get, delete, list

#[tokio::test]
async fn t01_02_03_04_create_conflict_missing_invalid() {
    let cluster = FakeCluster::start();
    for folder in [
        "01-pod-create-201",
        "02-pod-create-again-409",
        "03-pod-get-missing-404",
        "04-pod-create-invalid-name-422",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        assert_same_json(folder, &ours.json(), &rec.json());
        // Byte-exact where nothing is volatile; JSON ends with a newline as Go's encoder writes it.
        if folder != "01-pod-create-201" {
            assert_eq!(ours.body, rec.body, "{folder}: bytes");
        } else {
            assert_eq!(ours.body.last(), Some(&b'\n'));
        }
    }
}

#[tokio::test]
async fn t05_06_07_delete_grace0_default_missing() {
    let cluster = FakeCluster::start();
    let body = load("01-pod-create-201").0.body;
    for name in ["wire-b", "wire-c"] {
        let b = String::from_utf8(body.clone())
            .unwrap_or_default()
            .replace("wire-a", name);
        post_pod(&cluster, "ci", b.as_bytes()).await;
        wait_phase(&cluster, "ci", name, "Running").await;
    }
    let (req, rec) = load("05-pod-delete-grace0-200");
    let ours = replay(&cluster, &req).await;
    assert_envelope("05", &ours, &rec);
    assert_same_json("05", &ours.json(), &rec.json());
    let (req, rec) = load("05-pod-delete-grace0-200/get-immediately-after");
    let after = replay(&cluster, &req).await;
    assert_envelope("05/get", &after, &rec);
    assert_eq!(after.body, rec.body);

    let (req, rec) = load("06-pod-delete-default-200");
    let ours = replay(&cluster, &req).await;
    assert_envelope("06", &ours, &rec);
    assert_same_json("06", &ours.json(), &rec.json());
    // deletionTimestamp = now + 30 s.
    let ts = chrono::DateTime::parse_from_rfc3339(
        ours.json()["metadata"]["deletionTimestamp"]
            .as_str()
            .unwrap_or(""),
    )
    .expect("ts");
    let ahead = ts.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (29..=31).contains(&ahead),
        "deletionTimestamp {ahead}s ahead"
    );

    let (req, rec) = load("07-pod-delete-missing-404");
    let ours = replay(&cluster, &req).await;
    assert_envelope("07", &ours, &rec);
    assert_eq!(ours.body, rec.body);
}

#[tokio::test]
async fn t08_10_list_label_selector_and_empty_list() {
    let cluster = FakeCluster::start();
    let (req, rec) = load("10-watch-list-before");
    let ours = replay(&cluster, &req).await;
    assert_envelope("10", &ours, &rec);
    assert_same_json("10", &ours.json(), &rec.json());

    let body = String::from_utf8(load("01-pod-create-201").0.body).unwrap_or_default();
    for name in ["wire-a", "wire-b", "wire-c"] {
        post_pod(&cluster, "ci", body.replace("wire-a", name).as_bytes()).await;
    }
    post_pod(
        &cluster,
        "ci",
        body.replace("wire-a", "other")
            .replace("\"r1\"", "\"r2\"")
            .as_bytes(),
    )
    .await;
    for name in ["wire-a", "wire-b", "wire-c"] {
        wait_phase(&cluster, "ci", name, "Running").await;
    }
    let (req, rec) = load("08-pod-list-labelselector");
    let ours = replay(&cluster, &req).await;
    assert_envelope("08", &ours, &rec);
    let (o, r) = (ours.json(), rec.json());
    assert_eq!(o["kind"], r["kind"]);
    assert_eq!(o["apiVersion"], r["apiVersion"]);
    assert_eq!(
        normalize(&o["metadata"]),
        normalize(&r["metadata"]),
        "list metadata has only resourceVersion"
    );
    let items = o["items"].as_array().expect("items");
    assert_eq!(items.len(), r["items"].as_array().map_or(0, Vec::len));
    for (ours, rec) in items
        .iter()
        .zip(r["items"].as_array().into_iter().flatten())
    {
        assert!(
            ours.get("kind").is_none() && ours.get("apiVersion").is_none(),
            "items carry no kind/apiVersion"
        );
        assert_same_json("08 item", ours, rec);
    }
}

// ---------------------------------------------------------------------------
// 11–15: watches and resourceVersions

/// Runs the recorded lifecycle of 11 and compares the event sequence.
#[tokio::test]
async fn t11_watch_pod_lifecycle_with_bookmarks() {
    let cluster = FakeCluster::start();
    let list = send(
        &cluster,
        "GET",
        "/api/v1/namespaces/ci/pods?labelSelector=run%3Dw2",
        &json_headers(),
        b"",
    )
    .await;
    let rv = list.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (req, rec) = load("11-watch-pod-lifecycle");
    // The recording ran 25 s; 10 s is enough for the 4 s pod and keeps bookmarks before the end.
    let uri = req
        .uri
        .replace("resourceVersion=1313", &format!("resourceVersion={rv}"))
        .replace("timeoutSeconds=25", "timeoutSeconds=10");
    let watch = {
        let cluster_router = cluster.router();
        let headers = req.headers.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let mut b = axum::http::Request::builder().method("GET").uri(uri);
            for (k, v) in headers.iter().filter(|(k, _)| k != "Authorization") {
                b = b.header(k, v);
            }
            let resp = cluster_router
                .oneshot(b.body(axum::body::Body::empty()).expect("req"))
                .await
                .expect("ok");
            let status = resp.status().as_u16();
            let ct = resp.headers().get("content-type").cloned();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body");
            (status, ct, body)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    post_pod(
        &cluster,
        "ci",
        &create_body("11-watch-pod-lifecycle/create-request"),
    )
    .await;
    wait_phase(&cluster, "ci", "wire-watch", "Succeeded").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (dreq, drec) = load("11-watch-pod-lifecycle/delete-request");
    let del = replay(&cluster, &dreq).await;
    assert_envelope("11/delete", &del, &drec);
    assert_same_json("11/delete", &del.json(), &drec.json());
    let (status, ct, body) = watch.await.expect("watch task");
    assert_eq!(status, 200);
    assert_eq!(
        ct.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert!(body.ends_with(b"\n"), "each event ends with a newline");
    let ours: Vec<String> = String::from_utf8_lossy(&body)
        .lines()
        .map(|l| digest(&serde_json::from_str(l).expect("json")))
        .collect();
    let recorded: Vec<String> = rec.events().iter().map(digest).collect();
    assert_eq!(
        ours.len(),
        recorded.len(),
        "ours:\n{}\nrecorded:\n{}",
        ours.join("\n"),
        recorded.join("\n")
    );
    for (o, r) in ours.iter().zip(&recorded) {
        if r.starts_with("BOOKMARK") {
            assert!(o.starts_with("BOOKMARK"), "{o}");
        } else {
            assert_eq!(o, r);
        }
    }
    // Whole objects of each event, normalised, match too (bookmark objects included).
    let ours_ev: Vec<Value> = String::from_utf8_lossy(&body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    for (o, r) in ours_ev.iter().zip(rec.events()) {
        assert_same_json("11 event", o, &r);
    }
}

#[tokio::test]
async fn t12_12b_13_too_old_watch_cache_window_and_compacted_list() {
    let cluster = FakeCluster::start();
    let (req, rec) = load("12-watch-too-old-rv");
    let ours = replay(&cluster, &req).await;
    assert_envelope("12", &ours, &rec);
    let (o, r) = (&ours.events()[0], &rec.events()[0]);
    assert_eq!(ours.events().len(), 1);
    assert_eq!(o["type"], "ERROR");
    let msg = o["object"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("too old resource version: 10 (") && msg.ends_with(')'),
        "{msg}"
    );
    let mut o2 = o.clone();
    o2["object"]["message"] = r["object"]["message"].clone();
    assert_eq!(&o2, r);

    // 12b: a watch from an RV still in the history replays everything after it.
    let list = send(
        &cluster,
        "GET",
        "/api/v1/namespaces/ci/pods?labelSelector=run%3Dw2",
        &json_headers(),
        b"",
    )
    .await;
    let rv = list.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    post_pod(
        &cluster,
        "ci",
        &create_body("11-watch-pod-lifecycle/create-request"),
    )
    .await;
    wait_phase(&cluster, "ci", "wire-watch", "Succeeded").await;
    let (req, rec) = load("12b-watch-after-compaction-in-cache-window");
    let uri = req
        .uri
        .replace("resourceVersion=1313", &format!("resourceVersion={rv}"))
        .replace("timeoutSeconds=3", "timeoutSeconds=1");
    // Delete first so the replay holds the whole life, as in the recording.
    send(
        &cluster,
        "DELETE",
        "/api/v1/namespaces/ci/pods/wire-watch",
        &json_headers(),
        b"",
    )
    .await;
    let ours = send(&cluster, "GET", &uri, &req.headers, b"").await;
    assert_envelope("12b", &ours, &rec);
    let o: Vec<String> = ours.events().iter().map(digest).collect();
    let r: Vec<String> = rec.events().iter().map(digest).collect();
    assert_eq!(o, r);

    // 13: after a compaction, an Exact list at the old RV is 410 Gone.
    cluster.compact();
    let (req, rec) = load("13-list-compacted-rv-410");
    let uri = req
        .uri
        .replace("resourceVersion=1313", &format!("resourceVersion={rv}"));
    let ours = send(&cluster, "GET", &uri, &req.headers, b"").await;
    assert_envelope("13", &ours, &rec);
    assert_eq!(ours.body, rec.body);
}

#[tokio::test]
async fn t14_watch_without_rv_gives_synthetic_added_and_no_bookmark() {
    let cluster = FakeCluster::start();
    post_pod(&cluster, "ci", &create_body("01-pod-create-201")).await;
    // The recorded pod had long settled; wait for this one to settle too.
    wait_phase(&cluster, "ci", "wire-a", "Running").await;
    let (req, rec) = load("14-watch-without-resourceversion");
    let (ours, chunks) = send_timed(&cluster, "GET", &req.uri, &req.headers, b"").await;
    assert_envelope("14", &ours, &rec);
    let kinds: Vec<String> = ours
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, vec!["ADDED"]);
    assert!(
        chunks
            .last()
            .is_some_and(|(t, _)| *t < Duration::from_secs(1)),
        "ADDED comes at once"
    );
}

#[tokio::test]
async fn t15_list_paginated_limit() {
    let cluster = FakeCluster::start();
    let body = String::from_utf8(create_body("01-pod-create-201")).unwrap_or_default();
    for i in 0..5 {
        post_pod(
            &cluster,
            "ci",
            body.replace("wire-a", &format!("p{i}")).as_bytes(),
        )
        .await;
    }
    let (req, rec) = load("15-list-paginated-limit");
    let page1 = replay(&cluster, &req).await;
    assert_envelope("15", &page1, &rec);
    let m = &page1.json()["metadata"];
    let recm = &rec.json()["metadata"];
    assert_eq!(
        m.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
        recm.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    );
    assert_eq!(m["remainingItemCount"], 3);
    let token = m["continue"].as_str().expect("continue");
    let decoded = fake_k8s::objects::base64_decode(token).expect("base64");
    let decoded: Value = serde_json::from_slice(&decoded).expect("token JSON");
    assert_eq!(decoded["v"], "meta.k8s.io/v1");
    assert_eq!(decoded["start"], "p1\u{0}");
    let page2 = send(
        &cluster,
        "GET",
        &format!("/api/v1/namespaces/ci/pods?limit=2&continue={token}"),
        &json_headers(),
        b"",
    )
    .await;
    let p2 = page2.json();
    assert_eq!(
        p2["metadata"]["resourceVersion"], m["resourceVersion"],
        "page 2 keeps the RV"
    );
    assert_eq!(p2["metadata"]["remainingItemCount"], 1);
    let names: Vec<&str> = p2["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["p2", "p3"]);
}

// ---------------------------------------------------------------------------
// 20–29: pod status sequences

/// Creates the scenario's pod, watches it as recorded, optionally acts, and
/// compares the event digests (bookmarks and repeated pull cycles aside).
async fn status_scenario(
    cluster: &FakeCluster,
    folder: &str,
    act: impl AsyncFnOnce(&FakeCluster),
    compare: usize,
) -> Vec<Value> {
    let (req, rec) = load(folder);
    let rv = cluster.resource_version();
    let uri = req
        .uri
        .replace("resourceVersion=1344", &format!("resourceVersion={rv}"))
        .replace("timeoutSeconds=50", "timeoutSeconds=1");
    let name = req
        .uri
        .split("metadata.name%3D")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .unwrap_or_default()
        .to_string();
    post_pod(cluster, "ci", &create_body(&format!("{folder}/create"))).await;
    act(cluster).await;
    let ours = send(cluster, "GET", &uri, &req.headers, b"").await;
    assert_envelope(folder, &ours, &rec);
    let o: Vec<String> = ours
        .events()
        .iter()
        .map(digest)
        .filter(|d| !d.starts_with("BOOKMARK"))
        .take(compare)
        .collect();
    let r: Vec<String> = rec
        .events()
        .iter()
        .map(digest)
        .filter(|d| !d.starts_with("BOOKMARK"))
        .take(compare)
        .collect();
    assert_eq!(
        o,
        r,
        "{folder} ({name}): ours\n{}\nrecorded\n{}",
        o.join("\n"),
        r.join("\n")
    );
    ours.events()
}

fn fast_grace_cluster() -> FakeCluster {
    let c = FakeCluster::start();
    c.faults().cap_grace_period(Duration::from_millis(500));
    c
}

#[tokio::test]
async fn t20_21_exit0_never_running_and_exit3() {
    let cluster = FakeCluster::start();
    for folder in ["20-status-exit0", "21-status-exit3-error"] {
        let name = if folder.starts_with("20") {
            "st-exit0"
        } else {
            "st-exit3"
        };
        status_scenario(
            &cluster,
            folder,
            async |c| {
                wait_phase(
                    c,
                    "ci",
                    name,
                    if name == "st-exit0" {
                        "Succeeded"
                    } else {
                        "Failed"
                    },
                )
                .await;
            },
            100,
        )
        .await;
        let (greq, grec) = load(&format!("{folder}/get-at-15s"));
        let get = replay(&cluster, &greq).await;
        assert_envelope(folder, &get, &grec);
        assert_same_json(folder, &get.json(), &grec.json());
    }
    // 48, 48b, 48c: logs of the finished pods, stderr merged; follow closes at once.
    for folder in [
        "48-logs-completed-exit0",
        "48b-logs-completed-exit3-stderr",
        "48c-logs-follow-completed-pod",
    ] {
        let (req, rec) = load(folder);
        let (ours, chunks) = send_timed(&cluster, &req.method, &req.uri, &req.headers, b"").await;
        assert_envelope(folder, &ours, &rec);
        assert_eq!(ours.body, rec.body, "{folder}");
        assert!(
            chunks
                .last()
                .is_none_or(|(t, _)| *t < Duration::from_secs(1))
        );
    }
}

#[tokio::test]
async fn t22_errimagepull_then_backoff() {
    let cluster = FakeCluster::start();
    cluster
        .faults()
        .fail_image_pull("docker.io/library/nothing:1");
    let events = status_scenario(
        &cluster,
        "22-status-errimagepull-imagepullbackoff",
        async |c| {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = c;
        },
        7,
    )
    .await;
    let waiting = &events[3]["object"]["status"]["containerStatuses"][0]["state"]["waiting"];
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed to pull and unpack image \"docker.io/library/nothing:1\": ")
    );
    let backoff = &events[4]["object"]["status"]["containerStatuses"][0];
    let rec = load("22-status-errimagepull-imagepullbackoff").1.events();
    assert_eq!(
        backoff["state"], rec[4]["object"]["status"]["containerStatuses"][0]["state"],
        "Back-off message names the image"
    );
    assert_eq!(backoff["imageID"], "");
    // 47: the log of such a pod.
    let (req, rec) = load("47-logs-errimagepull-400");
    let ours = replay(&cluster, &req).await;
    assert_envelope("47", &ours, &rec);
    assert_eq!(ours.body, rec.body);
}

#[tokio::test]
async fn t23_24_25_26_waiting_reasons_and_their_log_answers() {
    let cluster = FakeCluster::start();
    // 24 needs a Secret without the key.
    cluster
        .create(
            Resource::Secrets,
            "ci",
            json!({"metadata": {"name": "wire-cfg"}, "stringData": {"other": "x"}}),
        )
        .expect("secret");
    for (folder, n) in [
        ("23-status-invalidimagename", 4),
        ("24-status-createcontainerconfigerror-missing-key", 4),
        ("25-status-createcontainerconfigerror-missing-secret", 4),
        ("26-status-unschedulable", 2),
    ] {
        let events = status_scenario(
            &cluster,
            folder,
            async |_| tokio::time::sleep(Duration::from_millis(300)).await,
            100,
        )
        .await;
        let rec = load(folder).1.events();
        assert_eq!(
            events.len(),
            n,
            "{folder}: no further events before the timeout"
        );
        let last = &events[n - 1]["object"]["status"];
        let rlast = &rec[n - 1]["object"]["status"];
        assert_same_json(folder, last, rlast);
        let (greq, grec) = load(&format!("{folder}/get-at-15s"));
        let get = replay(&cluster, &greq).await;
        assert_envelope(folder, &get, &grec);
        assert_same_json(folder, &get.json(), &grec.json());
    }
    for folder in [
        "47b-logs-createcontainerconfigerror-400",
        "47c-logs-unscheduled-pending-pod",
        "47d-logs-invalidimagename-400",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        assert_eq!(ours.body, rec.body, "{folder}");
    }
}

#[tokio::test]
async fn t27_oomkilled() {
    let cluster = FakeCluster::start();
    cluster.faults().oom_kill("st-oomkilled", Duration::ZERO);
    let (_, crec) = load("27-status-oomkilled/create");
    let create = send(
        &cluster,
        "POST",
        "/api/v1/namespaces/ci/pods",
        &json_headers(),
        &create_body("27-status-oomkilled/create"),
    )
    .await;
    assert_same_json("27/create", &create.json(), &crec.json());
    cluster
        .delete_pod("ci", "st-oomkilled", Some(0))
        .expect("cleanup");
    tokio::time::sleep(Duration::from_millis(50)).await;
    status_scenario(
        &cluster,
        "27-status-oomkilled",
        async |c| {
            wait_phase(c, "ci", "st-oomkilled", "Failed").await;
        },
        100,
    )
    .await;
    let (greq, grec) = load("27-status-oomkilled/get-at-15s");
    let get = replay(&cluster, &greq).await;
    assert_same_json("27", &get.json(), &grec.json());
}

#[tokio::test]
async fn t28_active_deadline() {
    let cluster = fast_grace_cluster();
    status_scenario(
        &cluster,
        "28-status-activedeadline",
        async |c| {
            wait_phase(c, "ci", "st-deadline", "Failed").await;
        },
        100,
    )
    .await;
    let (greq, grec) = load("28-status-activedeadline/get-at-37s");
    let get = replay(&cluster, &greq).await;
    assert_same_json("28", &get.json(), &grec.json());
}

#[tokio::test]
async fn t29_29b_delete_running_pod_with_grace() {
    for folder in [
        "29-delete-running-grace2-sigkill",
        "29b-delete-running-grace2-sigterm-trap",
    ] {
        let cluster = fast_grace_cluster();
        let name = if folder.starts_with("29b") {
            "st-delete-grace2-trap"
        } else {
            "st-delete-grace2-sigkill"
        };
        let events = status_scenario(
            &cluster,
            folder,
            async |c| {
                wait_running(c, "ci", name).await;
                // Give the shell time to install its trap.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let (greq, grec) = load(&format!("{folder}/get-before-delete"));
                let get = replay(c, &greq).await;
                assert_same_json(folder, &get.json(), &grec.json());
                let (dreq, drec) = load(&format!("{folder}/delete-grace2"));
                let del = replay(c, &dreq).await;
                assert_envelope(folder, &del, &drec);
                assert_same_json(folder, &del.json(), &drec.json());
                c.wait_for_pod("ci", name, Duration::from_secs(5), |_| false)
                    .await;
            },
            100,
        )
        .await;
        // The final delete moves deletionTimestamp back by the grace period.
        let n = events.len();
        let before = &events[n - 4]["object"]["metadata"]["deletionTimestamp"];
        let last = &events[n - 2]["object"]["metadata"]["deletionTimestamp"];
        let parse = |v: &Value| {
            chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or(""))
                .expect("ts")
                .timestamp()
        };
        assert_eq!(parse(before) - parse(last), 2, "{folder}");
    }
}

// ---------------------------------------------------------------------------
// 40–49: logs

/// 40 live with the recorded command, then 41–43d over the finished pod.
#[tokio::test]
async fn t40_to_43_logs_follow_timestamps_since_tail_limit() {
    let cluster = FakeCluster::start();
    post_pod(
        &cluster,
        "ci",
        &create_body("40-logs-follow-timestamps/create"),
    )
    .await;
    wait_running(&cluster, "ci", "wire-log20").await;
    let (req, rec) = load("40-logs-follow-timestamps");
    let (ours, chunks) = send_timed(&cluster, &req.method, &req.uri, &req.headers, b"").await;
    assert_envelope("40", &ours, &rec);
    let text = String::from_utf8_lossy(&ours.body).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20);
    for (i, l) in lines.iter().enumerate() {
        let (ts, rest) = l.split_once(' ').expect("timestamp prefix");
        assert_eq!(rest, format!("line {i}"));
        assert_eq!(ts.len(), 30, "RFC3339 with 9 fractional digits: {ts}");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok());
    }
    // Lines arrive live, about 0.3 s apart.
    let spread = chunks.last().map(|c| c.0).unwrap_or_default()
        - chunks.first().map(|c| c.0).unwrap_or_default();
    assert!(
        spread > Duration::from_secs(4),
        "lines arrived over {spread:?}"
    );

    // sinceTime: whole seconds, inclusive — against the fake's own timestamps.
    let ts: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once(' ').map(|p| p.0).unwrap_or(""))
        .collect();
    for pick in [10usize, 11, 15] {
        let since = ts[pick];
        let second = &since[..19];
        let first_in_second = ts
            .iter()
            .position(|t| t.starts_with(second))
            .expect("some line");
        for asked in [since.to_string(), format!("{second}Z")] {
            let a = send(
                &cluster,
                "GET",
                &format!(
                    "/api/v1/namespaces/ci/pods/wire-log20/log?timestamps=true&sinceTime={asked}"
                ),
                &req.headers,
                b"",
            )
            .await;
            let got: Vec<String> = String::from_utf8_lossy(&a.body)
                .lines()
                .map(str::to_string)
                .collect();
            assert_eq!(
                got.first().map(String::as_str),
                Some(lines[first_in_second]),
                "sinceTime={asked}"
            );
            assert_eq!(got.len(), 20 - first_in_second);
        }
    }
    // The recorded filters, against the recorded lines (byte-exact).
    let recorded: Vec<LogLine> = String::from_utf8_lossy(&rec.body)
        .lines()
        .map(|l| {
            let (ts, text) = l.split_once(' ').expect("ts");
            LogLine {
                time: chrono::DateTime::parse_from_rfc3339(ts).expect("ts").into(),
                text: text.as_bytes().to_vec(),
                newline: true,
            }
        })
        .collect();
    for folder in [
        "41-logs-sincetime-line10-exact",
        "41b-logs-sincetime-line11-exact",
        "41c-logs-sincetime-whole-second",
        "42-logs-sinceseconds",
        "43-logs-taillines",
        "43b-logs-limitbytes",
        "43c-logs-taillines-and-limitbytes-timestamps",
        "43d-logs-plain-completed",
    ] {
        let (req, rec) = load(folder);
        let q: std::collections::HashMap<String, String> = req
            .uri
            .split_once('?')
            .map(|(_, q)| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let opts = LogOptions {
            timestamps: q.contains_key("timestamps"),
            since_time: q
                .get("sinceTime")
                .map(|t| chrono::DateTime::parse_from_rfc3339(t).expect("t").into()),
            since_seconds: q.get("sinceSeconds").map(|s| s.parse().expect("n")),
            tail_lines: q.get("tailLines").map(|s| s.parse().expect("n")),
            limit_bytes: q.get("limitBytes").map(|s| s.parse().expect("n")),
        };
        let now = chrono::DateTime::parse_from_rfc2822(
            &rec.header("Date").unwrap_or("").replace("GMT", "+0000"),
        )
        .expect("date")
        .into();
        assert_eq!(render(&recorded, &opts, now), rec.body, "{folder}");
        // And the fake's endpoint answers with the same envelope.
        let ours = send(&cluster, "GET", &req.uri, &req.headers, b"").await;
        assert_envelope(folder, &ours, &rec);
        if folder == "43-logs-taillines"
            || folder == "43d-logs-plain-completed"
            || folder == "43b-logs-limitbytes"
        {
            assert_eq!(ours.body, rec.body, "{folder}");
        }
    }
}

#[tokio::test]
async fn t44_long_line_and_no_trailing_newline() {
    let cluster = FakeCluster::start();
    post_pod(
        &cluster,
        "ci",
        &create_body("44-logs-long-line-and-no-trailing-newline/create"),
    )
    .await;
    wait_phase(&cluster, "ci", "wire-longline", "Succeeded").await;
    let (req, rec) = load("44-logs-long-line-and-no-trailing-newline");
    let ours = replay(&cluster, &req).await;
    assert_envelope("44", &ours, &rec);
    assert_eq!(ours.body, rec.body);
    let (req, rec) = load("44b-logs-long-line-timestamps");
    let ours = replay(&cluster, &req).await;
    assert_envelope("44b", &ours, &rec);
    let strip = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .split('\n')
            .map(|l| {
                l.split_once(' ')
                    .map(|p| p.1.to_string())
                    .unwrap_or_default()
            })
            .collect()
    };
    assert_eq!(
        strip(&ours.body),
        strip(&rec.body),
        "one timestamp per line, the long line whole"
    );
    assert!(!ours.body.ends_with(b"\n"));
}

#[tokio::test]
async fn t45_46_49_container_choice_creating_and_missing() {
    let timing = KubeletTiming {
        create: Duration::from_millis(600),
        ..KubeletTiming::default()
    };
    let cluster = FakeCluster::start_with(FakeConfig {
        timing,
        ..FakeConfig::default()
    });
    post_pod(
        &cluster,
        "ci",
        &create_body("46-logs-container-creating-400/create"),
    )
    .await;
    cluster
        .wait_for_pod("ci", "wire-creating", Duration::from_secs(2), |p| {
            p["status"]["containerStatuses"].is_array()
        })
        .await;
    let (req, rec) = load("46-logs-container-creating-400");
    let ours = replay(&cluster, &req).await;
    assert_envelope("46", &ours, &rec);
    assert_eq!(ours.body, rec.body);

    post_pod(
        &cluster,
        "ci",
        &create_body("45-logs-multi-container-no-container-400/create"),
    )
    .await;
    wait_phase(&cluster, "ci", "wire-multi", "Running").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for folder in [
        "45-logs-multi-container-no-container-400",
        "45b-logs-multi-container-with-container",
        "45c-logs-unknown-container-400",
        "49-logs-missing-pod-404",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        assert_eq!(ours.body, rec.body, "{folder}");
    }
}

// ---------------------------------------------------------------------------
// 50–56: PVC, Secret, Service, access reviews, RBAC, authentication

#[tokio::test]
async fn t50_pvc_pending_then_bound_and_used() {
    let cluster = FakeCluster::start();
    let (req, rec) = load("50-pvc-create-pending-then-bound");
    let ours = replay(&cluster, &req).await;
    assert_envelope("50", &ours, &rec);
    assert_same_json("50", &ours.json(), &rec.json());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (greq, grec) = load("50-pvc-create-pending-then-bound/get-bound");
    let get = replay(&cluster, &greq).await;
    let (mut o, mut r) = (normalize(&get.json()), normalize(&grec.json()));
    // The recorded PV was pre-provisioned (10Gi, RWX+RWO); the fake's provisioner gives what was asked.
    assert_eq!(o["status"]["capacity"]["storage"], "1Gi");
    for v in [&mut o, &mut r] {
        v["status"].as_object_mut().map(|s| {
            s.remove("capacity");
            s.remove("accessModes")
        });
        v["metadata"]
            .as_object_mut()
            .map(|m| m.remove("managedFields"));
    }
    assert_eq!(o, r);
    let (preq, prec) = load("50-pvc-create-pending-then-bound/pod-using-pvc-create");
    let pod = replay(&cluster, &preq).await;
    assert_same_json("50/pod", &pod.json(), &prec.json());
}

#[tokio::test]
async fn t51_52_secret_string_data_and_headless_service() {
    let cluster = FakeCluster::start();
    for folder in [
        "51-secret-create-stringdata",
        "51-secret-create-stringdata/get",
        "52-service-headless-create",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        assert_same_json(folder, &ours.json(), &rec.json());
        assert!(ours.json().get("stringData").is_none());
    }
}

#[tokio::test]
async fn t53_54_self_subject_access_reviews() {
    let cluster = FakeCluster::start();
    cluster.faults().set_access("create", "secrets", "", false);
    for folder in [
        "53-ssar-allowed-as-serviceaccount",
        "53b-ssar-allowed-pods-log",
        "54-ssar-denied-as-serviceaccount",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        let (mut o, mut r) = (ours.json(), rec.json());
        assert_eq!(o["status"]["allowed"], r["status"]["allowed"], "{folder}");
        if r["status"]["allowed"] == true {
            assert!(
                o["status"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("RBAC: allowed by RoleBinding ")
            );
            o["status"]["reason"] = r["status"]["reason"].clone();
        }
        // The role names differ from the recording's cluster; everything else matches.
        for v in [&mut o, &mut r] {
            v["metadata"]["managedFields"][0]["fieldsV1"] = Value::Null;
        }
        assert_same_json(folder, &o, &r);
    }
}

#[tokio::test]
async fn t55_56_forbidden_and_unauthorized() {
    let cluster = FakeCluster::start();
    let f = cluster.faults();
    f.enforce_rbac(true);
    f.set_user("system:serviceaccount:ci:wire-sa");
    f.set_access("create", "secrets", "", false);
    f.set_access("list", "secrets", "", false);
    f.set_access_in("default", "get", "pods", "", false);
    for folder in [
        "55-forbidden-403-create-secret",
        "55b-forbidden-403-list-secrets",
        "55c-forbidden-403-get-pod-other-namespace",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        assert_eq!(ours.body, rec.body, "{folder}");
    }
    f.require_bearer_token("good-token");
    let (req, rec) = load("56-unauthorized-401-bad-token");
    let mut headers = req.headers.clone();
    headers.push(("Authorization".into(), "Bearer not-a-valid-token".into()));
    let ours = send(&cluster, &req.method, &req.uri, &headers, b"").await;
    assert_envelope("56", &ours, &rec);
    assert_eq!(ours.body, rec.body);
}

// ---------------------------------------------------------------------------
// 60–64: Pod Security admission; 70: garbage collection

#[tokio::test]
async fn t60_to_64_pod_security_admission() {
    let cluster = FakeCluster::start();
    cluster.set_namespace_label(
        "ci-restricted",
        "pod-security.kubernetes.io/enforce",
        "restricted",
    );
    cluster.set_namespace_label(
        "ci-baseline",
        "pod-security.kubernetes.io/enforce",
        "baseline",
    );
    for folder in [
        "60-psa-restricted-root-pod-403",
        "61-psa-restricted-compliant-pod-201",
        "62-psa-baseline-privileged-hostnetwork-403",
        "63-psa-baseline-plain-root-pod-201",
    ] {
        let (req, rec) = load(folder);
        let ours = replay(&cluster, &req).await;
        assert_envelope(folder, &ours, &rec);
        assert_same_json(folder, &ours.json(), &rec.json());
    }
    cluster.set_namespace_label(
        "ci-baseline",
        "pod-security.kubernetes.io/warn",
        "restricted",
    );
    let (req, rec) = load("64-psa-baseline-enforce-restricted-warn-201-warning-header");
    let ours = replay(&cluster, &req).await;
    assert_envelope("64", &ours, &rec);
    assert_eq!(ours.header("warning"), rec.header("Warning"));
}

#[tokio::test]
async fn t70_owner_deleted_in_background_collects_the_pod() {
    let cluster = FakeCluster::start();
    let (oreq, orec) = load("70-gc-owner-secret-background-delete/create-owner");
    let owner = replay(&cluster, &oreq).await;
    assert_envelope("70/owner", &owner, &orec);
    assert_same_json("70/owner", &owner.json(), &orec.json());
    let uid = owner.json()["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (preq, _) = load("70-gc-owner-secret-background-delete/create-owned-pod");
    let body =
        String::from_utf8_lossy(&preq.body).replace("aa3668dd-6705-4558-a78a-db13e23462f2", &uid);
    let created = post_pod(&cluster, "ci", body.as_bytes()).await;
    let rv = created.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_running(&cluster, "ci", "wire-owned").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (dreq, drec) = load("70-gc-owner-secret-background-delete/delete-owner");
    let del = replay(&cluster, &dreq).await;
    assert_envelope("70/delete", &del, &drec);
    let mut expected = drec.json();
    expected["details"]["uid"] = json!(uid);
    assert_eq!(del.json(), expected);
    cluster
        .wait_for_pod("ci", "wire-owned", Duration::from_secs(5), |_| false)
        .await;
    let (req, rec) = load("70-gc-owner-secret-background-delete");
    let uri = req
        .uri
        .replace("resourceVersion=1609", &format!("resourceVersion={rv}"))
        .replace("timeoutSeconds=20", "timeoutSeconds=1");
    let ours = send(&cluster, "GET", &uri, &req.headers, b"").await;
    let o: Vec<String> = ours.events().iter().map(digest).collect();
    let r: Vec<String> = rec.events().iter().map(digest).collect();
    assert_eq!(o, r);
    let graced = ours
        .events()
        .iter()
        .find(|e| e["object"]["metadata"]["deletionGracePeriodSeconds"] == 30)
        .is_some();
    assert!(graced, "the collector deletes with the default 30 s grace");
}

// ---------------------------------------------------------------------------
// 80–81 (v1.34): a kubelet restart under a followed log; runAsNonRoot with a
// root image

/// The lines of a log body with timestamps: (whole second, text).
fn stamped_lines(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split_inclusive('\n')
        .map(|l| {
            assert!(l.ends_with('\n'), "a cut line: {l:?}");
            let (ts, text) = l.trim_end_matches('\n').split_once(' ').expect("stamp");
            (ts[..19].to_string(), text.to_string())
        })
        .collect()
}

fn line_numbers(lines: &[(String, String)]) -> Vec<u32> {
    lines
        .iter()
        .map(|(_, t)| {
            t.strip_prefix("line-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {t:?}"))
        })
        .collect()
}

#[tokio::test]
async fn t80_kubelet_restart_ends_follows_cleanly_then_500_then_since_time_has_every_line() {
    let cluster = FakeCluster::start();
    // Recording 80's pod, ten times faster.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "counter"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "counter",
            "image": "busybox:1.36",
            "command": ["sh", "-c", "for i in $(seq 1 40); do echo line-$i; sleep 0.05; done"]}]}});
    post_pod(&cluster, "ci", &serde_json::to_vec(&pod).unwrap()).await;
    wait_running(&cluster, "ci", "counter").await;

    // a: a follow open when the kubelet dies ends like a finished log.
    let (areq, arec) = load("80-logs-kubelet-restart/a-follow-open-when-kubelet-dies");
    let (a, _) = tokio::join!(replay(&cluster, &areq), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.stop_kubelet();
    });
    assert_envelope("80/a", &a, &arec);
    let a_lines = stamped_lines(&a.body);
    let a_numbers = line_numbers(&a_lines);
    assert!(
        !a_numbers.is_empty() && a_numbers.len() < 40,
        "{a_numbers:?}"
    );
    assert_eq!(a_numbers, (1..=a_numbers.len() as u32).collect::<Vec<_>>());
    // The container ran on: its output grows while the pod still says Running.
    let before = cluster.log("ci", "counter", "counter").unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = cluster.log("ci", "counter", "counter").unwrap_or_default();
    assert!(after.lines().count() > before.lines().count());
    let p = cluster
        .object(Resource::Pods, "ci", "counter")
        .expect("pod");
    assert_eq!(p["status"]["phase"], "Running");

    // b: a new follow during the outage: 500, the API server's failed dial.
    let since = format!("{}Z", a_lines.last().expect("a line").0);
    let since_q = since.replace(':', "%3A");
    let (breq, brec) = load("80-logs-kubelet-restart/b-follow-while-kubelet-down");
    let uri = breq.uri.replace("2026-12-05T23%3A39%3A19Z", &since_q);
    let b = send(&cluster, "GET", &uri, &breq.headers, b"").await;
    assert_envelope("80/b", &b, &brec);
    let mut expected = brec.json();
    let message = expected["message"]
        .as_str()
        .unwrap_or_default()
        .replace("127.0.0.1", fake_k8s::kubelet::HOST_IP)
        .replace("2026-12-05T23%3A39%3A19Z", &since_q);
    expected["message"] = json!(message);
    assert_eq!(b.json(), expected);

    // c: once the kubelet is back, sinceTime gives every line from the second
    // the outage began, those already delivered in that second first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.start_kubelet();
    let (creq, crec) = load("80-logs-kubelet-restart/c-follow-since-outage-after-kubelet-back");
    let uri = creq.uri.replace("2026-12-05T23%3A39%3A19Z", &since_q);
    let c = send(&cluster, "GET", &uri, &creq.headers, b"").await;
    assert_envelope("80/c", &c, &crec);
    let c_lines = stamped_lines(&c.body);
    let c_numbers = line_numbers(&c_lines);
    let repeated = a_lines
        .iter()
        .filter(|(s, _)| s.as_str() == &since[..19])
        .count();
    let first = a_numbers.len() - repeated + 1;
    assert_eq!(c_numbers, (first as u32..=40).collect::<Vec<_>>());
    assert_eq!(c_lines[0].0, since[..19]);
    // The recording has the same shape: c starts inside a's last second.
    let rec_a = stamped_lines(&arec.body);
    let rec_c = stamped_lines(&crec.body);
    assert_eq!(rec_c[0].0, rec_a.last().expect("line").0);
    assert!(rec_a.contains(&rec_c[0]));
    assert_eq!(rec_c.last().map(|l| l.1.as_str()), Some("line-40"));
}

#[tokio::test]
async fn t81_run_as_non_root_with_a_root_image_never_starts() {
    let cluster = FakeCluster::start();
    let folder = "81-status-runasnonroot-root-image";
    let created = post_pod(&cluster, "ci", &create_body(&format!("{folder}/create"))).await;
    let uid = created.json()["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ours = cluster
        .wait_for_pod("ci", "nonroot", Duration::from_secs(10), |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        })
        .await
        .expect("the kubelet refuses the container");
    let (_, rec) = load(&format!("{folder}/get"));
    let rec = rec.json();
    let rec_uid = rec["metadata"]["uid"].as_str().unwrap_or_default();
    let mut expected = rec["status"]["containerStatuses"][0]["state"].clone();
    let message = expected["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .replace(rec_uid, &uid);
    expected["waiting"]["message"] = json!(message);
    let status = &ours["status"]["containerStatuses"][0];
    assert_eq!(status["state"], expected);
    for key in ["ready", "started", "restartCount", "imageID"] {
        assert_eq!(
            status[key], rec["status"]["containerStatuses"][0][key],
            "{key}"
        );
    }
    assert_eq!(ours["status"]["phase"], "Pending");
    // For good: the kubelet retries and nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = cluster
        .object(Resource::Pods, "ci", "nonroot")
        .expect("pod");
    assert_eq!(later["status"]["phase"], "Pending");
    assert_eq!(later["status"]["containerStatuses"][0]["state"], expected);

    // With runAsUser 1000 the same image runs.
    post_pod(
        &cluster,
        "ci",
        &create_body(&format!("{folder}/create-uid1000")),
    )
    .await;
    let done = wait_phase(&cluster, "ci", "nonroot-uid1000", "Succeeded").await;
    let (_, rec) = load(&format!("{folder}/get-uid1000"));
    let rec = rec.json();
    assert_eq!(done["status"]["phase"], rec["status"]["phase"]);
    assert_eq!(
        done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        rec["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
    );
}

#[test]
fn run_as_non_root_rules_follow_the_kubelet() {
    use fake_k8s::kubelet::verify_run_as_non_root as verify;
    let pod = |v: Value| v;
    let none = Value::Null;
    let p = "p_ci(u)";
    // Not asked for: anything runs.
    assert!(verify(&none, &none, "", p, "step").is_ok());
    // Asked for on the pod, the image is root (no user, or 0).
    for user in ["", "0", "0:0"] {
        assert_eq!(
            verify(&pod(json!({"runAsNonRoot": true})), &none, user, p, "step"),
            Err("container has runAsNonRoot and image will run as root (pod: \"p_ci(u)\", container: step)".into())
        );
    }
    // A numeric non-root image user, or an explicit runAsUser, passes.
    assert!(verify(&json!({"runAsNonRoot": true}), &none, "65532", p, "step").is_ok());
    assert!(
        verify(
            &json!({"runAsNonRoot": true, "runAsUser": 1000}),
            &none,
            "",
            p,
            "step"
        )
        .is_ok()
    );
    // The container's context wins over the pod's.
    assert!(
        verify(
            &json!({"runAsNonRoot": true}),
            &json!({"runAsNonRoot": false}),
            "",
            p,
            "step"
        )
        .is_ok()
    );
    assert!(
        verify(
            &json!({"runAsNonRoot": true}),
            &json!({"runAsUser": 5}),
            "",
            p,
            "step"
        )
        .is_ok()
    );
    assert_eq!(
        verify(
            &json!({"runAsNonRoot": true, "runAsUser": 0}),
            &none,
            "",
            p,
            "step"
        ),
        Err(
            "container's runAsUser breaks non-root policy (pod: \"p_ci(u)\", container: step)"
                .into()
        )
    );
    assert_eq!(
        verify(&json!({"runAsNonRoot": true}), &none, "nobody", p, "step"),
        Err("container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root (pod: \"p_ci(u)\", container: step)".into())
    );
}

/// Every file under `dir`, by its path relative to `dir`, with its bytes; walked without
/// recursion.
fn files_under(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// The repository carries a copy of the shared recordings so that a clone runs every test on
/// its own; where the shared ones are beside it (CI), the copy must be the same, file for file.
#[test]
fn the_recordings_in_the_repository_are_the_shared_ones() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/k8s-wire");
    if !shared.is_dir() {
        eprintln!("no ../shared/k8s-wire beside the repository: nothing to compare");
        return;
    }
    let copy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s-wire");
    let (ours, theirs) = (files_under(&copy), files_under(&shared));
    let differing: Vec<_> = theirs
        .keys()
        .chain(ours.keys())
        .filter(|p| ours.get(*p) != theirs.get(*p))
        .collect();
    assert!(
        differing.is_empty(),
        "tests/k8s-wire differs from ../shared/k8s-wire (copy it again: rm -r tests/k8s-wire && cp -r ../shared/k8s-wire tests/): {differing:?}"
    );
}

// ---------------------------------------------------------------------------
// 82: validation. The fake answers as the recording; for every rule, the fake and piculet's
// own check (src/k8s/validation.rs, written apart) refuse the same fields; and every object
// piculet renders with every option passes the fake.

#[tokio::test]
async fn t82_a_toleration_with_seconds_and_no_noexecute_is_refused_as_recorded() {
    let cluster = FakeCluster::start();
    let folder = "82-pod-create-invalid-toleration-422";
    let (req, rec) = load(folder);
    let ours = replay(&cluster, &req).await;
    assert_envelope(folder, &ours, &rec);
    assert_eq!(
        String::from_utf8_lossy(&ours.body),
        String::from_utf8_lossy(&rec.body),
        "{folder}: bytes"
    );
    assert!(cluster.objects(Resource::Pods, Some("ci")).is_empty());
}

/// Merges `patch` into `target` (objects key by key; anything else replaces).
fn merged(mut target: Value, patch: &Value) -> Value {
    fn merge(t: &mut Value, p: &Value) {
        match (t, p) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p.clone(),
        }
    }
    merge(&mut target, patch);
    target
}

/// The fields of the causes of the fake's 422, or none when it created the object.
fn fake_refusal(cluster: &FakeCluster, resource: Resource, obj: Value) -> Vec<String> {
    match cluster.create(resource, "ci", obj) {
        Ok(_) => Vec::new(),
        Err(e) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.details.expect("details")["causes"]
                .as_array()
                .expect("causes")
                .iter()
                .map(|c| c["field"].as_str().unwrap().to_string())
                .collect()
        }
    }
}

fn good_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "rules", "namespace": "ci", "labels": {"app": "x"}, "annotations": {"note": "y"}},
        "spec": {
            "restartPolicy": "Never",
            "hostname": "build",
            "containers": [{
                "name": "step", "image": "busybox:1.36", "command": ["sh", "-c", "true"],
                "env": [{"name": "CI", "value": "woodpecker"}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 60}],
            "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["svc.cluster.local"]},
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}
        }
    })
}

#[tokio::test]
async fn every_rule_is_applied_alike_by_piculet_and_the_fake() {
    let cluster = FakeCluster::start();
    cluster.stop_kubelet();
    let long = "b".repeat(256 * 1024);
    let req_term = |expr: Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}}});
    let node_terms = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0]";
    let searches: Vec<String> = (0..33).map(|i| format!("d{i}.example.com")).collect();
    let cases: Vec<(&str, Value, String)> = vec![
        ("name", json!({"metadata": {"name": "Bad_Name"}}), "metadata.name".into()),
        ("label key", json!({"metadata": {"labels": {"a/b/c": "x"}}}), "metadata.labels".into()),
        ("label value", json!({"metadata": {"labels": {"k": "x y"}}}), "metadata.labels".into()),
        ("annotation key", json!({"metadata": {"annotations": {"bad key": ""}}}), "metadata.annotations".into()),
        ("annotation size", json!({"metadata": {"annotations": {"a": long}}}), "metadata.annotations".into()),
        ("toleration seconds", json!({"spec": {"tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 3600}]}}), "spec.tolerations[0].effect".into()),
        ("toleration exists with value", json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}), "spec.tolerations[0].operator".into()),
        ("toleration without key", json!({"spec": {"tolerations": [{"operator": "Equal"}]}}), "spec.tolerations[0].operator".into()),
        ("toleration effect", json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "Sometimes"}]}}), "spec.tolerations[0].effect".into()),
        ("toleration operator", json!({"spec": {"tolerations": [{"key": "k", "operator": "Gt", "value": "1"}]}}), "spec.tolerations[0].operator".into()),
        ("affinity In without values", req_term(json!({"key": "zone", "operator": "In"})), format!("{node_terms}.values")),
        ("affinity Exists with values", req_term(json!({"key": "zone", "operator": "Exists", "values": ["a"]})), format!("{node_terms}.values")),
        ("affinity Gt with two values", req_term(json!({"key": "zone", "operator": "Gt", "values": ["1", "2"]})), format!("{node_terms}.values")),
        ("affinity operator", req_term(json!({"key": "zone", "operator": "Near", "values": ["a"]})), format!("{node_terms}.operator")),
        ("affinity value", req_term(json!({"key": "zone", "operator": "In", "values": ["a b"]})), format!("{node_terms}.values[0]")),
        ("affinity weight", json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 101, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]}}}}), "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight".into()),
        ("pod anti-affinity topology key", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": ""}]}}}}), "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey".into()),
        ("request above limit", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}}), "spec.containers[0].resources.requests".into()),
        ("negative quantity", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "resources": {"requests": {"memory": "-1Gi"}}}]}}), "spec.containers[0].resources.requests[memory]".into()),
        ("extended resource fraction", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "resources": {"requests": {"example.com/gpu": "500m"}, "limits": {"example.com/gpu": "500m"}}}]}}), "spec.containers[0].resources.limits[example.com/gpu]".into()),
        ("environment name", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "env": [{"name": "A=B", "value": "x"}]}]}}), "spec.containers[0].env[0].name".into()),
        ("secret reference key", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}]}]}}), "spec.containers[0].env[0].valueFrom.secretKeyRef.key".into()),
        ("mount path twice", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "volumeMounts": [{"name": "scratch", "mountPath": "/s"}, {"name": "scratch", "mountPath": "/s"}]}]}}), "spec.containers[0].volumeMounts[1].mountPath".into()),
        ("mount of no volume", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "volumeMounts": [{"name": "nowhere", "mountPath": "/s"}]}]}}), "spec.containers[0].volumeMounts[0].name".into()),
        ("subPath leaving", json!({"spec": {"containers": [{"name": "step", "image": "busybox:1.36", "volumeMounts": [{"name": "scratch", "mountPath": "/s", "subPath": "../x"}]}]}}), "spec.containers[0].volumeMounts.subPath".into()),
        ("four nameservers", json!({"spec": {"dnsConfig": {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"]}}}), "spec.dnsConfig.nameservers".into()),
        ("nameserver not an address", json!({"spec": {"dnsConfig": {"nameservers": ["dns.local"]}}}), "spec.dnsConfig.nameservers[0]".into()),
        ("33 search domains", json!({"spec": {"dnsConfig": {"searches": searches}}}), "spec.dnsConfig.searches".into()),
        ("search domain", json!({"spec": {"dnsConfig": {"searches": ["Corp.Example"]}}}), "spec.dnsConfig.searches[0]".into()),
        ("seccomp Localhost without a profile", json!({"spec": {"securityContext": {"seccompProfile": {"type": "Localhost"}}}}), "spec.securityContext.seccompProfile.localhostProfile".into()),
        ("seccomp profile without Localhost", json!({"spec": {"securityContext": {"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "p.json"}}}}), "spec.securityContext.seccompProfile.localhostProfile".into()),
        ("seccomp absolute profile", json!({"spec": {"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "/p.json"}}}}), "spec.securityContext.seccompProfile.localhostProfile".into()),
        ("AppArmor Localhost without a profile", json!({"spec": {"securityContext": {"appArmorProfile": {"type": "Localhost"}}}}), "spec.securityContext.appArmorProfile.localhostProfile".into()),
        ("AppArmor profile without Localhost", json!({"spec": {"securityContext": {"appArmorProfile": {"type": "RuntimeDefault", "localhostProfile": "p"}}}}), "spec.securityContext.appArmorProfile.localhostProfile".into()),
        ("negative user", json!({"spec": {"securityContext": {"runAsUser": -1}}}), "spec.securityContext.runAsUser".into()),
        ("host alias address", json!({"spec": {"hostAliases": [{"ip": "db", "hostnames": ["db.local"]}]}}), "spec.hostAliases[0].ip".into()),
        ("host alias name", json!({"spec": {"hostAliases": [{"ip": "10.0.0.5", "hostnames": ["Not_A_Host"]}]}}), "spec.hostAliases[0].hostnames[0]".into()),
        ("hostname", json!({"spec": {"hostname": "my.host"}}), "spec.hostname".into()),
        ("service account", json!({"spec": {"serviceAccountName": "Builder"}}), "spec.serviceAccountName".into()),
        ("node selector", json!({"spec": {"nodeSelector": {"disk": "-ssd"}}}), "spec.nodeSelector".into()),
        ("image padded", json!({"spec": {"containers": [{"name": "step", "image": " busybox:1.36"}]}}), "spec.containers[0].image".into()),
    ];
    assert!(
        fake_refusal(&cluster, Resource::Pods, good_pod()).is_empty(),
        "the base passes the fake"
    );
    let base: k8s_openapi::api::core::v1::Pod = serde_json::from_value(good_pod()).unwrap();
    assert_eq!(
        piculet::k8s::validation::pod(&base),
        [],
        "the base passes piculet"
    );
    for (i, (rule, patch, field)) in cases.into_iter().enumerate() {
        let mut pod = merged(good_pod(), &patch);
        pod["metadata"]["name"] = match pod["metadata"]["name"].as_str() {
            Some("rules") => json!(format!("rules-{i}")),
            _ => pod["metadata"]["name"].clone(),
        };
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
        let ours: Vec<String> = piculet::k8s::validation::pod(&typed)
            .into_iter()
            .map(|e| e.field)
            .collect();
        let fake = fake_refusal(&cluster, Resource::Pods, pod);
        assert_eq!(ours, fake, "{rule}: piculet and the fake differ");
        assert!(ours.contains(&field), "{rule}: {field} not in {ours:?}");
    }

    // The other objects piculet renders.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ci"}, "stringData": {"bad key": "v"}});
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "ci"}, "spec": {"clusterIP": "None", "selector": {"app": "x y"}}});
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "w", "namespace": "ci"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}});
    let typed_fields = |errors: Vec<piculet::k8s::validation::FieldError>| -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    };
    assert_eq!(
        typed_fields(piculet::k8s::validation::secret(
            &serde_json::from_value(secret.clone()).unwrap()
        )),
        fake_refusal(&cluster, Resource::Secrets, secret)
    );
    assert_eq!(
        typed_fields(piculet::k8s::validation::service(
            &serde_json::from_value(service.clone()).unwrap()
        )),
        fake_refusal(&cluster, Resource::Services, service)
    );
    assert_eq!(
        typed_fields(piculet::k8s::validation::claim(
            &serde_json::from_value(claim.clone()).unwrap()
        )),
        ["spec.accessModes"]
    );
    assert_eq!(
        fake_refusal(&cluster, Resource::PersistentVolumeClaims, claim),
        ["spec.accessModes"]
    );
}

/// Renders `yaml` under `settings` as the backend would, with every step key the unit tests
/// set by hand (`tune`).
fn rendered(
    yaml: &str,
    settings: serde_json::Value,
    tune: impl FnOnce(&mut piculet::pipeline::WorkflowPlan),
) -> piculet::k8s::RenderedWorkflow {
    use piculet::pipeline::{Context, RepoSpec, Source, SourceContent};
    let ctx = Context {
        repo: Some(RepoSpec {
            clone_url: "https://example.com/acme/api.git".into(),
            r#ref: "refs/heads/main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
        }),
        secret_names: ["docker_password".to_string()].into(),
        ..Context::default()
    };
    let src = [Source {
        name: "ci".into(),
        content: SourceContent::Text(yaml.to_string()),
    }];
    let mut workflow = piculet::pipeline::plan(&src, &ctx)
        .unwrap_or_else(|r| panic!("{:#?}", r.errors))
        .plan
        .workflows
        .remove(0);
    tune(&mut workflow);
    let settings: piculet::k8s::KubernetesSettings = serde_json::from_value(settings).unwrap();
    let config = piculet::k8s::KubernetesConfig::from_settings(&settings).unwrap();
    let input = piculet::k8s::RenderInput {
        pipeline_id: uuid::Uuid::now_v7(),
        workflow_id: uuid::Uuid::now_v7(),
        step_ids: Default::default(),
        attempt: 1,
        namespace: Some("ci".into()),
        workflow,
        secrets: [("docker_password".to_string(), "hunter2".to_string())].into(),
        registries: vec![piculet::run::RegistryCredential {
            address: "registry.example.com".into(),
            username: "ci".into(),
            password: "pw".into(),
        }],
        environment: [("CI_PIPELINE_ID".to_string(), "42".to_string())].into(),
        redact_secrets: false,
    };
    piculet::k8s::render_workflow(&config, &input).unwrap_or_else(|r| panic!("{r:#?}"))
}

#[tokio::test]
async fn every_object_rendered_with_every_option_passes_the_fake() {
    let all = "nodeSelector,tolerations,affinity,serviceAccountName,runtimeClassName,labels,annotations,hostUsers,secrets";
    let renders = [
        rendered(
            include_str!("../../src/k8s/testdata/every_option.yaml"),
            json!({"namespace": "ci", "namespace_overwrite_allowed": "ci", "allow_from_step": all, "service_account_overwrite_allowed": "builder", "allowed_claims": "build-*,tools"}),
            |w| {
                let s = &mut w.steps[1];
                s.extra_hosts = vec!["db.local:10.0.0.5".into()];
                s.dns = vec!["10.0.0.53".into()];
                s.dns_search = vec!["corp.example.com".into()];
                s.pull = true;
                s.volumes = vec!["build-cache:/cache".into(), "tools:/opt/tools:ro".into()];
                s.timeout = Some(Duration::from_secs(600));
                s.directory = Some("cmd/server".into());
            },
        ),
        rendered(
            include_str!("../../src/k8s/testdata/woodpecker_docs.yaml"),
            json!({"namespace": "ci", "allow_from_step": all, "allowed_claims": "woodpecker-cache", "privileged_images": "alpine"}),
            |_| {},
        ),
        rendered(
            include_str!("../../src/k8s/testdata/drone_docs.yaml"),
            json!({"namespace": "ci", "allow_from_step": "nodeSelector,tolerations,serviceAccountName", "privileged_images": "plugins/docker"}),
            |_| {},
        ),
        rendered(
            "services: [{name: redis, image: redis, backend_options: {kubernetes: {workspaceVolume: false}}}]\nsteps: [{name: build, image: golang, commands: [go build]}]\n",
            json!({
                "namespace": "ci", "storage_class": "fast-rwo", "storage_rwx": "false",
                "pod_labels": "{\"team\":\"platform\"}", "pod_annotations": "a.example.com/x=y",
                "node_selector": "pool=ci", "tolerations": "[{\"key\":\"ci\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]",
                "service_account": "piculet-steps", "runtime_class": "gvisor", "pull_secret_names": "corp",
                "pull_policy": "if-not-present,always", "priority_class": "ci-low", "dns_policy": "None",
                "dns_config": "{\"nameservers\":[\"10.0.0.10\"],\"searches\":[\"corp.example.com\"],\"options\":[{\"name\":\"ndots\",\"value\":\"2\"}]}",
                "termination_grace_period": "10s", "volumes": include_str!("../../src/k8s/testdata/admin_volumes.json"),
                "cpu_request": "500m", "cpu_limit": "2", "memory_limit": "2Gi", "secctx_nonroot": "true",
                "pod_security": "baseline"
            }),
            |_| {},
        ),
    ];
    for (i, mut r) in renders.into_iter().enumerate() {
        let cluster = FakeCluster::start();
        cluster.stop_kubelet();
        let claim = cluster
            .create(
                Resource::PersistentVolumeClaims,
                "ci",
                serde_json::to_value(&r.workspace).unwrap(),
            )
            .unwrap_or_else(|e| panic!("render {i}: workspace refused: {e:?}"));
        r.set_owner_uid(claim["metadata"]["uid"].as_str().unwrap());
        let mut objects: Vec<(Resource, Value)> = Vec::new();
        for s in &r.secrets {
            objects.push((Resource::Secrets, serde_json::to_value(s).unwrap()));
        }
        objects.push((
            Resource::Services,
            serde_json::to_value(&r.service).unwrap(),
        ));
        for p in &r.pods {
            objects.push((Resource::Pods, serde_json::to_value(&p.pod).unwrap()));
        }
        for (resource, obj) in objects {
            let name = obj["metadata"]["name"].clone();
            if let Err(e) = cluster.create(resource, "ci", obj) {
                panic!("render {i}: {resource:?} {name} refused: {e:?}");
            }
        }
    }
}
