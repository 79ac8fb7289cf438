//! The fake through a real `kube::Client` (CRUD, watcher with 410 relist,
//! log streams, access reviews) and the simulated kubelet's failure knobs.

use crate::k8s_common as common;
use piculet_fake_k8s as fake_k8s;

use std::time::{Duration, Instant};

use fake_k8s::{ApiFailure, FakeCluster, FakeConfig, RequestMatch, Resource};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

fn pod(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "piculet", "step": name}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                 "containers": [{"name": "main", "image": "busybox:1.36", "command": ["/bin/sh", "-c", script]}]}
    }))
    .expect("pod")
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

fn waiting(p: &Value) -> (String, String) {
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or("").into(),
        w["message"].as_str().unwrap_or("").into(),
    )
}

fn terminated(p: &Value) -> (i64, String) {
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    (
        t["exitCode"].as_i64().unwrap_or(-1),
        t["reason"].as_str().unwrap_or("").into(),
    )
}

async fn wait(cluster: &FakeCluster, name: &str, cond: impl Fn(&Value) -> bool) -> Value {
    cluster
        .wait_for_pod("ci", name, Duration::from_secs(10), cond)
        .await
        .unwrap_or_else(|| panic!("{name}: condition not reached"))
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Through kube::Client

#[tokio::test]
async fn crud_through_kube_client() {
    let cluster = FakeCluster::start();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    let created = pods
        .create(&PostParams::default(), &pod("a", "sleep 5"))
        .await
        .expect("create");
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    pods.create(&PostParams::default(), &pod("b", "sleep 5"))
        .await
        .expect("create b");
    let again = pods
        .create(&PostParams::default(), &pod("a", "true"))
        .await
        .expect_err("409");
    assert_eq!(api_code(&again), 409);

    let got = pods.get("a").await.expect("get");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(api_code(&pods.get("nope").await.expect_err("404")), 404);

    let listed = pods
        .list(&ListParams::default().labels("step=b"))
        .await
        .expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
    let all = pods
        .list(&ListParams::default().labels("app=piculet,step in (a,b)"))
        .await
        .expect("list");
    assert_eq!(all.items.len(), 2);

    let patched = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "yes"}}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        patched
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("extra"))
            .map(String::as_str),
        Some("yes")
    );
    let by_new_label = pods
        .list(&ListParams::default().labels("extra=yes"))
        .await
        .expect("list");
    assert_eq!(by_new_label.items.len(), 1);

    let deleted = pods
        .delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted_pod = deleted.left().expect("a pod DELETE answers the Pod");
    assert!(deleted_pod.metadata.deletion_timestamp.is_some());
    assert_eq!(
        api_code(
            &pods
                .delete("nope", &DeleteParams::default())
                .await
                .expect_err("404")
        ),
        404
    );

    let counts = cluster.verb_counts();
    assert_eq!(counts.get("create"), Some(&3));
    assert_eq!(counts.get("list"), Some(&3));
    assert_eq!(cluster.count("patch", "pods"), 1);
}

#[tokio::test]
async fn watcher_sees_phases_and_survives_410() {
    let cluster = FakeCluster::start();
    let client = cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ci");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let stream_api = pods.clone();
    let task = tokio::spawn(async move {
        let mut stream =
            watcher(stream_api, watcher::Config::default().labels("app=piculet")).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                let _ = tx.send((p.metadata.name.unwrap_or_default(), phase));
            }
        }
    });
    pods.create(&PostParams::default(), &pod("w1", "sleep 0.3; echo done"))
        .await
        .expect("create");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&"Succeeded".to_string()) && Instant::now() < deadline {
        if let Ok(Some((name, phase))) =
            tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
            && name == "w1"
            && seen.last() != Some(&phase)
        {
            seen.push(phase);
        }
    }
    assert_eq!(seen, vec!["Pending", "Running", "Succeeded"]);

    // 410: the watch ends with ERROR Expired; the watcher relists and goes on.
    let lists_before = cluster.count("list", "pods");
    cluster.expire_watches();
    pods.create(&PostParams::default(), &pod("w2", "true"))
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_w2 = false;
    while !saw_w2 && Instant::now() < deadline {
        if let Ok(Some((name, _))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            saw_w2 = name == "w2";
        }
    }
    assert!(saw_w2, "watcher went on after 410");
    assert!(
        cluster.count("list", "pods") > lists_before,
        "watcher relisted after 410"
    );
    task.abort();
}

#[tokio::test]
async fn log_stream_follows_real_output() {
    let cluster = FakeCluster::start();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    // The step writes its other lines only once the test has read the first: the stream
    // follows the output as it is written, however loaded the machine, or never gets there.
    let gate = std::env::temp_dir().join(format!("piculet-log-gate-{}", uuid::Uuid::now_v7()));
    pods.create(
        &PostParams::default(),
        &pod(
            "l",
            &format!(
                "echo line 1; while [ ! -e '{}' ]; do sleep 0.02; done; \
                 for i in 2 3 4 5; do echo line $i; done; echo oops >&2",
                gate.display()
            ),
        ),
    )
    .await
    .expect("create");
    wait(&cluster, "l", |p| p["status"]["phase"] == "Running").await;
    let reader = pods
        .log_stream(
            "l",
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .expect("log stream");
    let mut lines = reader.lines();
    // The bound only turns a stream that holds the line back forever into a failure.
    let first = tokio::time::timeout(Duration::from_secs(60), lines.try_next())
        .await
        .expect("lines arrive as written: line 1 was held back")
        .expect("line");
    std::fs::write(&gate, b"").expect("open the gate");
    let mut got: Vec<String> = first.into_iter().collect();
    while let Some(line) = lines.try_next().await.expect("line") {
        got.push(line);
    }
    let _ = std::fs::remove_file(&gate);
    assert_eq!(
        got,
        vec!["line 1", "line 2", "line 3", "line 4", "line 5", "oops"]
    );
    let with_ts = pods
        .logs(
            "l",
            &LogParams {
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await
        .expect("logs");
    assert!(
        with_ts
            .lines()
            .all(|l| l.len() > 31 && l.as_bytes()[29] == b'Z'),
        "{with_ts}"
    );
}

#[tokio::test]
async fn self_subject_access_review_allowed_and_denied() {
    let cluster = FakeCluster::start();
    cluster.faults().set_access("create", "secrets", "", false);
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client());
    let review = |verb: &str, resource: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some("ci".into()),
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let allowed = api
        .create(&PostParams::default(), &review("create", "pods"))
        .await
        .expect("ssar");
    assert!(allowed.status.as_ref().is_some_and(|s| s.allowed));
    let denied = api
        .create(&PostParams::default(), &review("create", "secrets"))
        .await
        .expect("ssar");
    let status = denied.status.expect("status");
    assert!(!status.allowed);
    assert_eq!(status.reason, None);
}

#[tokio::test]
async fn serves_over_tcp_with_real_framing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = FakeCluster::start();
    let base = cluster.serve_tcp().await.expect("tcp");
    assert_eq!(cluster.base_url().as_deref(), Some(base.as_str()));
    let config = kube::Config::new(base.parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    let pods: Api<Pod> = Api::namespaced(client, "ci");
    pods.create(&PostParams::default(), &pod("t", "true"))
        .await
        .expect("create over TCP");
    let addr = base.trim_start_matches("http://");
    for (path, expect) in [
        ("/api/v1/namespaces/ci/pods/none", "content-length: 176"),
        ("/api/v1/namespaces/ci/pods/t", "transfer-encoding: chunked"),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        assert!(text.contains(expect), "{path}: {text}");
        assert!(
            text.contains("audit-id: ") && text.contains("date: "),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// The simulated kubelet and the fault knobs

#[tokio::test]
async fn exit_code_and_log_are_real() {
    let cluster = FakeCluster::start();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(&PostParams::default(), &pod("x3", "echo hi; exit 3"))
        .await
        .expect("create");
    let p = wait(&cluster, "x3", |p| phase(p) == "Failed").await;
    assert_eq!(terminated(&p), (3, "Error".into()));
    assert_eq!(
        pods.logs("x3", &LogParams::default()).await.expect("logs"),
        "hi\n"
    );
}

#[tokio::test]
async fn env_from_secrets_working_dir_and_retry_after_missing_secret() {
    let root = std::env::temp_dir().join(format!("fakek8s-{}", uuid::Uuid::new_v4()));
    let cluster = FakeCluster::start_with(FakeConfig {
        fs_root: Some(root.clone()),
        ..FakeConfig::default()
    });
    let mut spec = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "env"}, "spec": {"restartPolicy": "Never", "containers": [{
        "name": "main", "image": "busybox:1.36", "workingDir": "/workspace/src",
        "command": ["/bin/sh", "-c", "echo token=$TOKEN plain=$PLAIN; pwd"],
        "env": [{"name": "PLAIN", "value": "p"}, {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    }]}});
    cluster
        .create(Resource::Pods, "ci", spec.clone())
        .expect("pod");
    let p = wait(&cluster, "env", |p| {
        waiting(p).0 == "CreateContainerConfigError"
    })
    .await;
    assert_eq!(waiting(&p).1, "secret \"creds\" not found");
    cluster
        .create(
            Resource::Secrets,
            "ci",
            json!({"metadata": {"name": "creds"}, "stringData": {"other": "1"}}),
        )
        .expect("secret");
    spec["metadata"]["name"] = json!("env2");
    cluster
        .create(Resource::Pods, "ci", spec.clone())
        .expect("pod");
    let p = wait(&cluster, "env2", |p| {
        waiting(p).0 == "CreateContainerConfigError"
    })
    .await;
    assert_eq!(waiting(&p).1, "couldn't find key token in Secret ci/creds");
    // The kubelet retries: once the key exists, both pods run.
    cluster
        .delete(Resource::Secrets, "ci", "creds")
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster
        .create(
            Resource::Secrets,
            "ci",
            json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}),
        )
        .expect("secret");
    for name in ["env", "env2"] {
        wait(&cluster, name, |p| phase(p) == "Succeeded").await;
        let log = cluster.log("ci", name, "main").expect("log");
        assert_eq!(
            log,
            format!(
                "token=s3cr3t plain=p\n{}\n",
                root.join("workspace/src").display()
            )
        );
    }
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn image_pull_error_then_backoff_and_invalid_image_name() {
    let cluster = FakeCluster::start();
    cluster
        .faults()
        .fail_image_pull("registry.example.com/team/tool:2");
    let mut p = pod("pull", "true");
    p.spec.as_mut().expect("spec").containers[0].image =
        Some("registry.example.com/team/tool:2".into());
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create");
    let first = wait(&cluster, "pull", |p| waiting(p).0 == "ErrImagePull").await;
    assert!(
        waiting(&first)
            .1
            .contains("\"registry.example.com/team/tool:2\"")
    );
    let backoff = wait(&cluster, "pull", |p| waiting(p).0 == "ImagePullBackOff").await;
    assert_eq!(
        waiting(&backoff).1,
        "Back-off pulling image \"registry.example.com/team/tool:2\""
    );
    assert_eq!(phase(&backoff), "Pending");

    let mut p = pod("badname", "true");
    p.spec.as_mut().expect("spec").containers[0].image = Some("Not/A:Valid:Image".into());
    pods.create(&PostParams::default(), &p)
        .await
        .expect("the API accepts it");
    let bad = wait(&cluster, "badname", |p| waiting(p).0 == "InvalidImageName").await;
    assert!(
        waiting(&bad)
            .1
            .contains("repository name must be lowercase")
    );
}

#[tokio::test]
async fn unschedulable_by_knob_and_by_node_selector() {
    let cluster = FakeCluster::start();
    cluster.faults().unschedulable("u1");
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(&PostParams::default(), &pod("u1", "true"))
        .await
        .expect("create");
    let mut p2 = pod("u2", "true");
    p2.spec.as_mut().expect("spec").node_selector =
        Some([("disktype".to_string(), "ssd".to_string())].into());
    pods.create(&PostParams::default(), &p2)
        .await
        .expect("create");
    for name in ["u1", "u2"] {
        let p = wait(&cluster, name, |p| {
            p["status"]["conditions"][0]["reason"] == "Unschedulable"
        })
        .await;
        assert!(
            p["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("0/1 nodes are available: ")
        );
        assert!(p["spec"]["nodeName"].is_null());
    }
    // Labelling the node lets the scheduler place u2.
    cluster.faults().set_node_label("disktype", "ssd");
    wait(&cluster, "u2", |p| phase(p) == "Succeeded").await;
}

#[tokio::test]
async fn log_stream_cut_mid_way_then_resumed() {
    let cluster = FakeCluster::start();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(
        &PostParams::default(),
        &pod("cut", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.15; done"),
    )
    .await
    .expect("create");
    wait(&cluster, "cut", |p| phase(p) == "Running").await;
    cluster.faults().cut_log_stream("cut", 2, 1);
    let first = pods
        .log_stream(
            "cut",
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .expect("stream");
    let got: Vec<String> = first.lines().try_collect().await.expect("lines");
    assert_eq!(got, vec!["1", "2"]);
    assert_eq!(
        cluster
            .pod("ci", "cut")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Running")
    );
    let second = pods
        .log_stream(
            "cut",
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .expect("stream");
    let got: Vec<String> = second.lines().try_collect().await.expect("lines");
    assert_eq!(got, vec!["1", "2", "3", "4", "5", "6"]);
}

#[tokio::test]
async fn deleted_from_outside_and_evicted() {
    let cluster = FakeCluster::start();
    cluster
        .faults()
        .cap_grace_period(Duration::from_millis(300));
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(
        &PostParams::default(),
        &pod("gone", "trap 'exit 143' TERM; sleep 30 & wait"),
    )
    .await
    .expect("create");
    pods.create(&PostParams::default(), &pod("ignores", "sleep 30"))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("evicted", "sleep 30"))
        .await
        .expect("create");
    for name in ["gone", "ignores", "evicted"] {
        wait(&cluster, name, |p| phase(p) == "Running").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut events = watcher(
        pods.clone(),
        watcher::Config::default().fields("metadata.name=gone"),
    )
    .boxed();
    let returned = cluster.delete_pod("ci", "gone", None).expect("delete");
    assert_eq!(returned["metadata"]["deletionGracePeriodSeconds"], 5);
    let mut last_exit = None;
    while let Some(Ok(ev)) = events.next().await {
        match ev {
            watcher::Event::Apply(p) => {
                if let Some(t) = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c[0].state.clone())
                    .and_then(|s| s.terminated)
                {
                    last_exit = Some(t.exit_code);
                }
            }
            watcher::Event::Delete(_) => break,
            _ => {}
        }
    }
    assert_eq!(last_exit, Some(143), "the trap ran");
    assert!(cluster.pod("ci", "gone").is_none());

    let started = Instant::now();
    cluster
        .delete_pod("ci", "ignores", Some(30))
        .expect("delete");
    cluster
        .wait_for_pod("ci", "ignores", Duration::from_secs(5), |_| false)
        .await;
    assert!(cluster.pod("ci", "ignores").is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "SIGTERM ignored (PID 1), SIGKILL after the (capped) grace"
    );

    assert!(cluster.evict_pod("ci", "evicted"));
    let p = wait(&cluster, "evicted", |p| phase(p) == "Failed").await;
    assert_eq!(p["status"]["reason"], "Evicted");
    assert!(
        p["status"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("The node was low on resource")
    );
    assert_eq!(terminated(&p).0, 137);
    assert!(cluster.pod("ci", "evicted").is_some(), "evicted pods stay");
}

#[tokio::test]
async fn oom_killed() {
    let cluster = FakeCluster::start();
    cluster.faults().oom_kill("oom", Duration::from_millis(200));
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(&PostParams::default(), &pod("oom", "echo start; sleep 10"))
        .await
        .expect("create");
    let p = wait(&cluster, "oom", |p| phase(p) == "Failed").await;
    assert_eq!(terminated(&p), (137, "OOMKilled".into()));
    assert_eq!(cluster.log("ci", "oom", "main").as_deref(), Some("start\n"));
}

#[tokio::test]
async fn api_500_429_and_slow_answers() {
    let cluster = FakeCluster::start();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "ci");
    pods.create(&PostParams::default(), &pod("f", "sleep 2"))
        .await
        .expect("create");
    cluster.faults().fail_requests(
        RequestMatch::new("get", "pods"),
        ApiFailure::InternalError,
        2,
    );
    assert_eq!(api_code(&pods.get("f").await.expect_err("500")), 500);
    assert_eq!(api_code(&pods.get("f").await.expect_err("500")), 500);
    pods.get("f").await.expect("third get succeeds");

    cluster.faults().fail_requests(
        RequestMatch::verb("list"),
        ApiFailure::TooManyRequests {
            retry_after_secs: 2,
        },
        1,
    );
    let a = common::send(&cluster, "GET", "/api/v1/namespaces/ci/pods", &[], b"").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("2"));
    assert_eq!(a.json()["reason"], "TooManyRequests");
    assert_eq!(a.json()["details"]["retryAfterSeconds"], 2);

    cluster.faults().slow_requests(
        RequestMatch::resource("pods"),
        Duration::from_millis(400),
        1,
    );
    let started = Instant::now();
    pods.get("f").await.expect("slow get");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let statuses: Vec<u16> = cluster
        .requests()
        .iter()
        .filter(|r| r.verb == "get")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![500, 500, 200, 200]);
}

#[tokio::test]
async fn bad_requests_answer_a_status() {
    let cluster = FakeCluster::start();
    for (method, path, body) in [
        ("POST", "/api/v1/namespaces/ci/pods", "not json"),
        ("POST", "/api/v1/namespaces/ci/pods", "[1,2]"),
        (
            "POST",
            "/api/v1/namespaces/ci/pods",
            "{\"metadata\":{\"name\":\"x\"},\"spec\":{}}",
        ),
        (
            "GET",
            "/api/v1/namespaces/ci/pods?labelSelector=a%20in%20(",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/ci/pods?watch=1&resourceVersion=abc",
            "",
        ),
        ("GET", "/api/v1/namespaces/ci/widgets", ""),
        ("PATCH", "/api/v1/namespaces/ci/pods/x", "{}"),
        (
            "GET",
            "/api/v1/namespaces/ci/pods/x/log?sinceTime=yesterday",
            "",
        ),
    ] {
        let a = common::send(
            &cluster,
            method,
            path,
            &common::json_headers(),
            body.as_bytes(),
        )
        .await;
        assert!(a.status >= 400, "{method} {path}: {}", a.status);
        assert_eq!(a.json()["kind"], "Status", "{method} {path}");
    }
}
