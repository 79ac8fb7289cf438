//! The Kubernetes backend's figures of the README's Performance section, against the fake API
//! server of `crates/fake-k8s` (its kubelet runs each container's script as a local process).
//! The fake runs in a child process (this binary with `--fake`), and so do the watch and the SSE
//! clients that measure watch → SSE (`--observe`), so the memory figure is piculet's alone. Run through `scripts/bench.sh k8s`.
//!
//! A measurement, not a test: nothing fails on a slow machine; it reports.

#[path = "../tests/it/common.rs"]
#[allow(unused_macros)]
mod common;
use piculet_fake_k8s as fake_k8s;
mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Db, TestApp, wait_finished};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use piculet::config::Settings;
use report::{percentile, row, rss_kib};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

const NS: &str = "piculet";

/// A step's pod name, and when our watch saw its container end.
type Seen = (String, Option<DateTime<Utc>>);

/// What the observer saw, by step id: its pod and when the watch saw its container end, and
/// when the step's end arrived on its pipeline's event stream.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Observed {
    seen: HashMap<String, Seen>,
    delivered: HashMap<String, DateTime<Utc>>,
}
/// Workflows at once; `BENCH_K8S_WORKFLOWS` changes it.
fn in_flight() -> usize {
    std::env::var("BENCH_K8S_WORKFLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Collects the engine's own create delays from piculet's `pod create request sent` events.
struct CreateDelays(Arc<Mutex<Vec<f64>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CreateDelays {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Delay(Option<u64>);
        impl tracing::field::Visit for Delay {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "create_delay_us" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut delay = Delay(None);
        event.record(&mut delay);
        if let Some(us) = delay.0 {
            self.0.lock().unwrap().push(us as f64 / 1000.0);
        }
    }
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--fake") => return serve_fake().await,
        Some("--observe") => return observe().await,
        _ => {}
    }
    let create_delays: Arc<Mutex<Vec<f64>>> = Arc::default();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let only_the_backend = tracing_subscriber::filter::Targets::new()
            .with_target("piculet::backend::kubernetes", tracing::Level::DEBUG);
        tracing_subscriber::registry()
            .with(only_the_backend)
            .with(CreateDelays(create_delays.clone()))
            .init();
    }
    let in_flight = in_flight();
    println!("\nKubernetes backend (fake API server in a child process; {in_flight} workflows)");
    let dir = std::env::temp_dir().join(format!("piculet-bench-k8s-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut fake = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--fake")
        .arg(dir.join("fs"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(fake.stdout.take().unwrap()).lines();
    let url = out.next_line().await.unwrap().expect("the fake's URL");
    let kubeconfig = dir.join("kubeconfig");
    fake_k8s::write_kubeconfig(&kubeconfig, &url).unwrap();
    let mut settings = Settings {
        backend: Some("kubernetes".into()),
        max_workflows: Some(in_flight.to_string()),
        ..Settings::default()
    };
    settings.kubernetes.kubeconfig = Some(kubeconfig.display().to_string());
    settings.kubernetes.namespace = Some(NS.into());
    // The rate limiter is measured apart: here it must not be what is measured.
    settings.kubernetes.qps = Some("5000".into());
    settings.kubernetes.burst = Some("10000".into());
    let app = TestApp::start(Db::Postgres, settings, true).await;

    // Warm-up: connections, prepared statements, the shared watch.
    let id = submit(
        &app,
        "steps:\n  - name: a\n    image: busybox\n    commands: [true]\n",
    )
    .await;
    wait_finished(&app, &id, 60).await;
    let base = rss_kib(std::process::id());
    create_delays.lock().unwrap().clear();
    let requests_before = fake_requests(&url).await;

    // The observer (this binary with `--observe`, a process of its own so that the memory
    // figure is piculet's alone) watches pods as piculet does and follows every pipeline's
    // events: it stamps both ends of the watch → SSE latency with one clock.
    let mut observer = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--observe")
        .arg(&app.base)
        .arg(&kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to_observer = observer.stdin.take().unwrap();
    let mut from_observer = tokio::io::BufReader::new(observer.stdout.take().unwrap()).lines();
    assert_eq!(
        from_observer.next_line().await.unwrap().as_deref(),
        Some("watching"),
        "the observer's watch"
    );

    // 200 workflows in flight, each: a step that sleeps (idle, so the cores stay free for
    // piculet and the fake), then a second step.
    let pipeline = "steps:\n  - name: hold\n    image: busybox\n    commands: [sleep 6]\n  - name: after\n    image: busybox\n    commands: [echo done]\n";
    let mut ids = Vec::new();
    for _ in 0..in_flight {
        ids.push(submit(&app, pipeline).await);
    }
    for id in &ids {
        to_observer
            .write_all(format!("{id}\n").as_bytes())
            .await
            .unwrap();
    }
    to_observer.flush().await.unwrap();
    // Every workflow's first step runs: measure piculet's memory now.
    let mut running = 0;
    for _ in 0..240 {
        running = count_running(&app, &ids).await;
        if running == in_flight {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = rss_kib(std::process::id());
    let mut finished = Vec::new();
    for id in &ids {
        finished.push(wait_finished(&app, id, 300).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(to_observer);
    let observed: Observed = serde_json::from_str(
        &from_observer
            .next_line()
            .await
            .unwrap()
            .expect("the observer's stamps"),
    )
    .unwrap();
    let _ = observer.wait().await;
    let requests_after = fake_requests(&url).await;

    // Runnable (the engine stamps started_at) → the pod create request reaching the API
    // server (the fake stamps its arrival).
    let creates: HashMap<String, DateTime<Utc>> = fake_creates(&url).await;
    let Observed { seen, delivered } = observed;
    let mut to_create = Vec::new();
    let mut watch_to_sse = Vec::new();
    let mut steps = 0usize;
    for p in &finished {
        for s in p["workflows"][0]["steps"].as_array().unwrap() {
            steps += 1;
            let id = s["id"].as_str().unwrap();
            let started: DateTime<Utc> = s["started_at"].as_str().unwrap().parse().unwrap();
            if let Some((pod, ended)) = seen.get(id) {
                if let Some(created) = creates.get(pod) {
                    to_create
                        .push((*created - started).num_microseconds().unwrap() as f64 / 1000.0);
                }
                if let (Some(ended), Some(got)) = (ended, delivered.get(id)) {
                    watch_to_sse.push((*got - *ended).num_microseconds().unwrap() as f64 / 1000.0);
                }
            }
        }
    }
    to_create.sort_by(f64::total_cmp);
    watch_to_sse.sort_by(f64::total_cmp);
    let ok = finished.iter().filter(|p| p["status"] == "success").count();
    row("workflows succeeded", format!("{ok}/{in_flight}"), "", None);
    let calls: HashMap<String, usize> = diff(&requests_before, &requests_after);
    let per_step_calls = calls.get("create pods").copied().unwrap_or(0)
        + calls.get("get pods/log").copied().unwrap_or(0);
    let all_calls: usize = calls
        .iter()
        .filter(|(k, _)| !k.starts_with("watch "))
        .map(|(_, v)| v)
        .sum();
    row(
        "API calls per step: pod create + log reads",
        format!("{:.2}", per_step_calls as f64 / steps as f64),
        "≤ 3 besides the watch",
        Some(per_step_calls as f64 / steps as f64 <= 3.0),
    );
    row(
        "API calls per step: everything but the watch",
        format!("{:.2}", all_calls as f64 / steps as f64),
        "",
        None,
    );
    let mut breakdown: Vec<_> = calls.iter().collect();
    breakdown.sort();
    println!(
        "    ({steps} steps: {})",
        breakdown
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut own = create_delays.lock().unwrap().clone();
    own.sort_by(f64::total_cmp);
    if !own.is_empty() {
        row(
            &format!(
                "engine: runnable → pod create request sent, p50 (n={})",
                own.len()
            ),
            format!("{:.2} ms", percentile(&own, 0.5)),
            "",
            None,
        );
        let p99 = percentile(&own, 0.99);
        row(
            "engine: runnable → pod create request sent, p99",
            format!("{p99:.2} ms"),
            "≤ 30 ms",
            Some(p99 <= 30.0),
        );
    }
    if !to_create.is_empty() {
        row(
            "runnable → pod create request at the API, p50",
            format!("{:.1} ms", percentile(&to_create, 0.5)),
            "",
            None,
        );
        row(
            "runnable → pod create request at the API, p99",
            format!("{:.1} ms", percentile(&to_create, 0.99)),
            "",
            None,
        );
    }
    if !watch_to_sse.is_empty() {
        row(
            "container ended on the watch → SSE event, p50",
            format!("{:.1} ms", percentile(&watch_to_sse, 0.5)),
            "",
            None,
        );
        row(
            "container ended on the watch → SSE event, p99",
            format!("{:.1} ms", percentile(&watch_to_sse, 0.99)),
            "",
            None,
        );
    }
    row(
        &format!("memory per running workflow ({running} in flight)"),
        format!(
            "{:.1} KiB",
            during.saturating_sub(base) as f64 / running.max(1) as f64
        ),
        "",
        None,
    );
    drop(app);
    let _ = fake.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn submit(app: &TestApp, yaml: &str) -> String {
    let p: Value = app.submit_yaml(yaml).await.json().await.unwrap();
    p["id"].as_str().unwrap().to_string()
}

async fn count_running(app: &TestApp, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        let p = app.pipeline(id).await;
        if p["workflows"][0]["steps"][0]["status"] == "running" {
            n += 1;
        }
    }
    n
}

/// When each pod's first create request reached the fake, by pod name.
async fn fake_creates(url: &str) -> HashMap<String, DateTime<Utc>> {
    reqwest::get(format!("{url}/fake/creates"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The fake's request counts by `verb resource`, from its debug endpoint.
async fn fake_requests(url: &str) -> HashMap<String, usize> {
    reqwest::get(format!("{url}/fake/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn diff(before: &HashMap<String, usize>, after: &HashMap<String, usize>) -> HashMap<String, usize> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The child: serves the fake API server, prints its URL, and runs until killed.
async fn serve_fake() {
    let root = std::env::args().nth(2).map(std::path::PathBuf::from);
    let cluster = Arc::new(fake_k8s::FakeCluster::start_with(fake_k8s::FakeConfig {
        fs_root: root,
        ..fake_k8s::FakeConfig::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = cluster.clone();
    let router = cluster.router().route(
        "/fake/requests",
        axum::routing::get(move || {
            let counts = counts.clone();
            async move {
                let mut by: HashMap<String, usize> = HashMap::new();
                for r in counts.requests() {
                    *by.entry(format!("{} {}", r.verb, r.resource)).or_default() += 1;
                }
                axum::Json(by)
            }
        }),
    );
    let creates = cluster.clone();
    let router = router.route(
        "/fake/creates",
        axum::routing::get(move || {
            let creates = creates.clone();
            async move {
                let mut first: HashMap<String, DateTime<Utc>> = HashMap::new();
                for r in creates.requests() {
                    if r.verb == "create"
                        && r.resource == "pods"
                        && let Some(name) = r.created
                    {
                        first.entry(name).or_insert(r.at);
                    }
                }
                axum::Json(first)
            }
        }),
    );
    println!("http://{addr}");
    axum::serve(fake_k8s::no_delay(listener), router)
        .await
        .unwrap();
}

/// The observer child: `--observe <piculet's URL> <kubeconfig>`. It watches the namespace's
/// pods, prints `watching` once the watch has listed them, follows the events of each pipeline
/// whose id comes on stdin, and when stdin closes prints what it saw ([`Observed`]) as one line
/// of JSON.
async fn observe() {
    let base = std::env::args().nth(2).expect("piculet's URL");
    let kubeconfig = std::env::args().nth(3).expect("the kubeconfig");
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let (listed, is_listed) = tokio::sync::oneshot::channel();
    let watch_task = {
        let observed = observed.clone();
        let api: kube::Api<Pod> = kube::Api::namespaced(client, NS);
        let mut listed = Some(listed);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Some(Ok(e)) = events.next().await {
                let now = Utc::now();
                let pod = match e {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
                    watcher::Event::InitDone => {
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let Some(step) = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("piculet.dev/step-id").cloned())
                else {
                    continue;
                };
                let ended = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .is_some_and(|s| s.terminated.is_some());
                let mut observed = observed.lock().unwrap();
                let entry = observed
                    .seen
                    .entry(step)
                    .or_insert_with(|| (pod.metadata.name.clone().unwrap_or_default(), None));
                if ended {
                    entry.1.get_or_insert(now);
                }
            }
        })
    };
    is_listed.await.expect("the watch lists the pods");
    println!("watching");

    // An SSE follower of each pipeline's events records when each step's end arrives.
    let http = reqwest::Client::new();
    let mut ids = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(id) = ids.next_line().await.unwrap() {
        let observed = observed.clone();
        let request = http
            .get(format!("{base}/api/v1/pipelines/{id}/events"))
            .header("authorization", format!("Bearer {}", common::TOKEN))
            .header("accept", "text/event-stream");
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let mut events = std::pin::pin!(piculet::client::sse::events(response));
            while let Some(Ok(e)) = events.next().await {
                let now = Utc::now();
                let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                    continue;
                };
                if v["subject"] == "step"
                    && let Some(step) = v["id"].as_str()
                    && matches!(v["status"].as_str(), Some("success" | "failure" | "error"))
                {
                    observed
                        .lock()
                        .unwrap()
                        .delivered
                        .entry(step.to_string())
                        .or_insert(now);
                }
            }
        });
    }
    watch_task.abort();
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    println!("{}", serde_json::to_string(&observed).unwrap());
}
