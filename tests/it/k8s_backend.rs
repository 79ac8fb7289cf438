//! End to end with `PICULET_BACKEND=kubernetes`: piculet over HTTP, connected through a
//! kubeconfig to the fake API server in `crates/fake-k8s` (over TCP), whose kubelet really runs
//! each container's script. Every pod piculet creates is the one `POST /render` shows.

use crate::common;
use piculet_fake_k8s as fake_k8s;

use std::time::Duration;

use common::{Db, TestApp, find_step, log_text, step_id, wait_finished, wait_step};
use fake_k8s::{ApiFailure, FakeCluster, FakeConfig, RequestMatch, Resource};
use piculet::config::Settings;
use serde_json::{Value, json};

const NS: &str = "piculet";

/// A fake cluster and piculet connected to it.
struct Env {
    cluster: FakeCluster,
    app: TestApp,
    /// What the app was started with, for a second replica.
    settings: Settings,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("piculet-k8s-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Env {
    async fn start(db: Db, tune: impl FnOnce(&mut Settings)) -> Env {
        let dir = temp_dir();
        // Containers' working directories (/woodpecker/…) are taken inside the test's own.
        let cluster = FakeCluster::start_with(FakeConfig {
            fs_root: Some(dir.join("fs")),
            ..FakeConfig::default()
        });
        Env::start_in(cluster, dir, db, tune).await
    }

    async fn start_on(cluster: FakeCluster, db: Db, tune: impl FnOnce(&mut Settings)) -> Env {
        Env::start_in(cluster, temp_dir(), db, tune).await
    }

    async fn start_in(
        cluster: FakeCluster,
        dir: std::path::PathBuf,
        db: Db,
        tune: impl FnOnce(&mut Settings),
    ) -> Env {
        let url = cluster.serve_tcp().await.unwrap();
        let mut settings = Settings {
            backend: Some("kubernetes".into()),
            grace_period: Some("1s".into()),
            ..Settings::default()
        };
        let kubeconfig = dir.join("kubeconfig");
        fake_k8s::write_kubeconfig(&kubeconfig, &url).unwrap();
        settings.kubernetes.kubeconfig = Some(kubeconfig.display().to_string());
        settings.kubernetes.namespace = Some(NS.into());
        settings.kubernetes.start_timeout = Some("3s".into());
        tune(&mut settings);
        let app = TestApp::start(db, settings.clone(), true).await;
        Env {
            cluster,
            app,
            settings,
            _dir: TempDir(dir),
        }
    }

    async fn submit(&self, yaml: &str) -> String {
        let r = self.app.submit_yaml(yaml).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
    }

    async fn run(&self, yaml: &str) -> Value {
        let id = self.submit(yaml).await;
        wait_finished(&self.app, &id, 60).await
    }

    /// piculet's objects left in the namespace, by kind.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (resource, kind) in [
            (Resource::Pods, "pod"),
            (Resource::Secrets, "secret"),
            (Resource::Services, "service"),
            (Resource::PersistentVolumeClaims, "pvc"),
        ] {
            for o in self.cluster.objects(resource, Some(NS)) {
                if o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "piculet" {
                    left.push(format!(
                        "{kind}/{}",
                        o["metadata"]["name"].as_str().unwrap()
                    ));
                }
            }
        }
        left
    }

    /// Waits until no object of piculet is left; returns what is left after the wait.
    async fn wait_clean(&self) -> Vec<String> {
        for _ in 0..200 {
            if self.leftovers().is_empty() {
                return Vec::new();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.leftovers()
    }

    /// The pod of a step (by its label), once it exists.
    async fn pod_of(&self, step_id: &str) -> Value {
        for _ in 0..400 {
            if let Some(p) = self
                .cluster
                .objects(Resource::Pods, Some(NS))
                .into_iter()
                .find(|p| p["metadata"]["labels"]["piculet.dev/step-id"] == step_id)
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no pod for step {step_id}");
    }
}

fn step(p: &Value, name: &str) -> Value {
    find_step(p, name).unwrap_or_else(|| panic!("no step {name}: {p:#}"))
}

#[tokio::test]
async fn a_pipeline_runs_as_pods_and_leaves_nothing_behind() {
    for db in [Db::Postgres, Db::Sqlite] {
        let env = Env::start(db, |_| {}).await;
        let p = env
            .run(
                "\
steps:
  - name: build
    image: busybox:1.36
    environment:
      GREETING: hello
    commands:
      - echo \"$GREETING from $CI_STEP_NAME\"
      - printf 'no newline at the end'
",
            )
            .await;
        assert_eq!(p["status"], "success", "{p:#}");
        let build = step(&p, "build");
        assert_eq!(build["exit_code"], 0);
        let log = log_text(&env.app, build["id"].as_str().unwrap()).await;
        assert!(log.contains("hello from build\n"), "{log}");
        assert!(log.ends_with("no newline at the end"), "{log:?}");
        assert_eq!(env.wait_clean().await, Vec::<String>::new());
        // What ran was what /render shows: one PVC, one Service, then the pod.
        let created: Vec<String> = env
            .cluster
            .requests()
            .iter()
            .filter(|r| r.verb == "create" && r.resource != "selfsubjectaccessreviews")
            .map(|r| r.resource.clone())
            .collect();
        assert_eq!(created, ["persistentvolumeclaims", "services", "pods"]);
    }
}

#[tokio::test]
async fn throttled_and_failing_api_answers_are_retried() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let faults = env.cluster.faults();
    faults.fail_requests(
        RequestMatch::new("create", "pods"),
        ApiFailure::TooManyRequests {
            retry_after_secs: 1,
        },
        1,
    );
    faults.fail_requests(
        RequestMatch::new("create", "persistentvolumeclaims"),
        ApiFailure::InternalError,
        2,
    );
    faults.fail_requests(
        RequestMatch::new("get", "pods/log"),
        ApiFailure::InternalError,
        1,
    );
    let p = env
        .run("steps:\n  - name: build\n    image: busybox:1.36\n    commands: [echo built]\n")
        .await;
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&env.app, &step_id(&p, "build")).await;
    assert!(log.contains("built\n"), "{log}");
    let statuses = |verb: &str, resource: &str| -> Vec<u16> {
        env.cluster
            .requests()
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .map(|r| r.status)
            .collect()
    };
    assert_eq!(statuses("create", "pods"), [429, 201]);
    assert_eq!(
        statuses("create", "persistentvolumeclaims"),
        [500, 500, 201]
    );
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_failing_step_reports_its_exit_code() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let p = env
        .run(
            "\
steps:
  - name: test
    image: busybox:1.36
    commands:
      - echo failing
      - exit 3
  - name: notify
    image: busybox:1.36
    when:
      status: [failure]
    commands:
      - echo \"pipeline status $CI_PIPELINE_STATUS\"
",
        )
        .await;
    assert_eq!(p["status"], "failure", "{p:#}");
    assert_eq!(step(&p, "test")["status"], "failure");
    assert_eq!(step(&p, "test")["exit_code"], 3);
    let notify = step(&p, "notify");
    assert_eq!(notify["status"], "success", "{p:#}");
    let log = log_text(&env.app, notify["id"].as_str().unwrap()).await;
    assert!(log.contains("pipeline status failure"), "{log}");
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn independent_steps_run_as_parallel_pods() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    // Each waits for the other's marker: both succeed only if their pods run at once.
    let dir = env._dir.0.display().to_string();
    let wait_for = |other: &str| {
        format!(
            "for i in $(seq 1 100); do [ -f {dir}/{other} ] && exit 0; sleep 0.05; done; exit 1"
        )
    };
    let p = env
        .run(&format!(
            "\
steps:
  - name: a
    image: busybox:1.36
    commands:
      - touch {dir}/a
      - '{}'
  - name: b
    image: busybox:1.36
    commands:
      - touch {dir}/b
      - '{}'
  - name: c
    image: busybox:1.36
    depends_on: [a, b]
    commands: [echo both done]
",
            wait_for("b"),
            wait_for("a")
        ))
        .await;
    assert_eq!(p["status"], "success", "{p:#}");
    for name in ["a", "b", "c"] {
        assert_eq!(step(&p, name)["status"], "success", "{p:#}");
    }
}

#[tokio::test]
async fn a_step_reaches_a_service_by_its_name() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The fake has no DNS server: `resolve` looks the name up in what cluster DNS would
    // answer this pod (see FAKE_CLUSTER_HOSTS in crates/fake-k8s/src/kubelet.rs).
    let r = env
        .app
        .submit_json(&json!({
            "configs": [{"name": "ci", "content": format!("\
services:
  - name: web
    image: python:3
    commands:
      - echo served > index.html
      - exec python3 -m http.server {port} --bind 127.0.0.1
steps:
  - name: fetch
    image: python:3
    commands:
      - resolve() {{ awk -v n=\"$1\" '{{for (i = 2; i <= NF; i++) if ($i == n) {{print $1; exit}}}}' \"$FAKE_CLUSTER_HOSTS\"; }}
      - echo \"web is $(resolve web)\"
      - for i in $(seq 1 100); do python3 -c \"import urllib.request as u; print(u.urlopen('http://$(resolve web):{port}/index.html').read().decode())\" && exit 0; sleep 0.1; done; exit 1
")}]
        }))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p = wait_finished(&env.app, &id, 60).await;
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&env.app, &step_id(&p, "fetch")).await;
    assert!(log.contains("web is 127.0.0.1\n"), "{log}");
    assert!(log.contains("served\n"), "{log}");
    assert_eq!(step(&p, "web")["status"], "success", "{p:#}");
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn start_failures_become_errors_in_the_clusters_words() {
    let env = Env::start(Db::Postgres, |s| {
        s.kubernetes.allow_from_step = Some("secrets".into());
    })
    .await;
    env.cluster
        .faults()
        .fail_image_pull("registry.example/missing:1");
    let p = env
        .run(
            "\
steps:
  - name: pull
    image: registry.example/missing:1
    depends_on: []
    commands: [echo never]
  - name: bad-name
    image: 'busybox:1.36:extra'
    depends_on: []
    commands: [echo never]
  - name: secret
    image: busybox:1.36
    depends_on: []
    commands: [echo never]
    backend_options:
      kubernetes:
        secrets:
          - name: no-such-secret
            key: token
            target:
              env: TOKEN
",
        )
        .await;
    // A step that could not run makes the pipeline an error, not a failure.
    assert_eq!(p["status"], "error", "{p:#}");
    let pull = step(&p, "pull");
    assert_eq!(pull["status"], "error");
    let reason = pull["reason"].as_str().unwrap();
    assert!(
        (reason.starts_with("ErrImagePull") || reason.starts_with("ImagePullBackOff"))
            && reason.contains("registry.example/missing:1"),
        "{reason}"
    );
    let bad = step(&p, "bad-name");
    assert_eq!(bad["status"], "error");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .starts_with("InvalidImageName: image \"busybox:1.36:extra\""),
        "{bad:#}"
    );
    let secret = step(&p, "secret");
    assert_eq!(secret["status"], "error");
    assert_eq!(
        secret["reason"],
        "CreateContainerConfigError: secret \"no-such-secret\" not found"
    );
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_pull_is_tried_again_with_the_next_pull_policy() {
    let env = Env::start(Db::Postgres, |s| {
        s.kubernetes.pull_policy = Some("IfNotPresent,Always".into());
    })
    .await;
    env.cluster
        .faults()
        .fail_image_pull("registry.example/missing:1");
    // Each pod that fails to pull is deleted; a watch of the test's own sees each one's policy.
    let policies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let watcher = {
        let policies = policies.clone();
        let client = env.cluster.client();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, NS);
            let mut events =
                std::pin::pin!(kube::runtime::watcher::watcher(api, Default::default()));
            while let Some(Ok(e)) = events.next().await {
                if let kube::runtime::watcher::Event::Apply(p) = e {
                    let policy = p.spec.unwrap().containers[0]
                        .image_pull_policy
                        .clone()
                        .unwrap_or_default();
                    let entry = (p.metadata.uid.unwrap_or_default(), policy);
                    let mut seen = policies.lock().unwrap();
                    if !seen.contains(&entry) {
                        seen.push(entry);
                    }
                }
            }
        })
    };
    let p = env
        .run("steps:\n  - name: pull\n    image: registry.example/missing:1\n    commands: [echo never]\n")
        .await;
    watcher.abort();
    let pull = step(&p, "pull");
    assert_eq!(pull["status"], "error", "{p:#}");
    assert!(
        pull["reason"]
            .as_str()
            .unwrap()
            .contains("registry.example/missing:1"),
        "{pull:#}"
    );
    assert_eq!(
        env.cluster.count("create", "pods"),
        2,
        "one pod per pull policy"
    );
    let tried: Vec<String> = policies
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        tried,
        ["IfNotPresent", "Always"],
        "in the administrator's order"
    );
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_pod_that_cannot_start_is_deleted_at_once() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    env.cluster
        .faults()
        .fail_image_pull("registry.example/missing:1");
    let id = env
        .submit(
            "\
steps:
  - name: pull
    image: registry.example/missing:1
    depends_on: []
    commands: [echo never]
  - name: slow
    image: busybox:1.36
    depends_on: []
    commands: [sleep 3]
",
        )
        .await;
    let pull = wait_step(&env.app, &id, "pull", "error", 30).await;
    let pull_id = pull["id"].as_str().unwrap().to_string();
    let mut gone = false;
    for _ in 0..40 {
        gone = !env
            .cluster
            .objects(Resource::Pods, Some(NS))
            .iter()
            .any(|p| p["metadata"]["labels"]["piculet.dev/step-id"] == pull_id.as_str());
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let p = env.app.pipeline(&id).await;
    assert_eq!(p["status"], "running", "the other step still runs: {p:#}");
    assert!(
        gone,
        "the pod that could not pull is deleted before the workflow ends"
    );
    wait_finished(&env.app, &id, 30).await;
}

#[tokio::test]
async fn an_unschedulable_pod_fails_after_the_start_timeout_with_the_schedulers_message() {
    let env = Env::start(Db::Postgres, |s| {
        s.kubernetes.node_selector = Some("disktype=ssd".into());
        s.kubernetes.start_timeout = Some("1s".into());
    })
    .await;
    let p = env
        .run("steps:\n  - name: build\n    image: busybox:1.36\n    commands: [echo never]\n")
        .await;
    let build = step(&p, "build");
    assert_eq!(build["status"], "error", "{p:#}");
    let reason = build["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("the pod did not start within 1s: Unschedulable: 0/1 nodes are available"),
        "{reason}"
    );
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_broken_log_stream_is_resumed_with_every_line_exactly_once() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    // Two cuts: after 5 lines, then after 5 more of the resumed stream.
    env.cluster.faults().cut_log_stream("printer", 5, 2);
    let p = env
        .run(
            "\
steps:
  - name: printer
    image: busybox:1.36
    commands:
      - for i in $(seq 1 40); do echo line $i; sleep 0.1; done
",
        )
        .await;
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&env.app, &step_id(&p, "printer")).await;
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected, "{log}");
    assert!(
        env.cluster.count("get", "pods/log") >= 3,
        "the stream was resumed: {:?}",
        env.cluster.verb_counts()
    );
}

/// The pod whose name starts with `prefix-`, once it exists, and its log once it has `lines`
/// lines.
async fn wait_for_lines(cluster: &FakeCluster, prefix: &str, lines: usize) -> String {
    for _ in 0..800 {
        let pod = cluster
            .objects(Resource::Pods, Some(NS))
            .into_iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .find(|n| n.starts_with(&format!("{prefix}-")));
        if let Some(name) = pod
            && cluster
                .log(NS, &name, "step")
                .is_some_and(|l| l.lines().count() >= lines)
        {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{prefix} never printed {lines} lines");
}

/// Waits until piculet follows a log (the container was reported running).
async fn wait_following(cluster: &FakeCluster) {
    for _ in 0..800 {
        if cluster.count("get", "pods/log") > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no log was followed");
}

/// Log answers of the fake with this status code.
fn log_answers(cluster: &FakeCluster, status: u16) -> usize {
    cluster
        .requests()
        .iter()
        .filter(|r| r.resource == "pods/log" && r.status == status)
        .count()
}

/// Recording 80 on the fake: the open follow ends like a finished log while the container
/// runs on, new reads answer 500 for the outage, then `sinceTime` has every line.
async fn a_kubelet_restart_loses_no_line_and_repeats_none(db: Db) {
    let env = Env::start(db, |_| {}).await;
    let id = env
        .submit(
            "\
steps:
  - name: printer
    image: busybox:1.36
    commands:
      - for i in $(seq 1 60); do echo line $i; sleep 0.05; done
",
        )
        .await;
    wait_for_lines(&env.cluster, "printer", 10).await;
    wait_following(&env.cluster).await;
    env.cluster.restart_kubelet(Duration::from_millis(1200));
    let p = wait_finished(&env.app, &id, 60).await;
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&env.app, &step_id(&p, "printer")).await;
    let expected: Vec<String> = (1..=60).map(|i| format!("line {i}")).collect();
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("+ ")).collect();
    assert_eq!(lines, expected, "{log}");
    assert!(
        log_answers(&env.cluster, 500) >= 1,
        "the outage was seen: {:?}",
        env.cluster.requests()
    );
}

/// A container that ends while the kubelet is down is seen to end only once it is back; the
/// read of its end must get through the 500s too.
async fn a_step_that_ends_during_a_kubelet_outage_keeps_its_last_lines(db: Db) {
    let env = Env::start(db, |_| {}).await;
    let id = env
        .submit(
            "\
steps:
  - name: printer
    image: busybox:1.36
    commands:
      - for i in $(seq 1 20); do echo line $i; sleep 0.05; done
",
        )
        .await;
    wait_for_lines(&env.cluster, "printer", 3).await;
    wait_following(&env.cluster).await;
    env.cluster.stop_kubelet();
    // Every line is written while the kubelet is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The kubelet reports the end at once, but log reads keep failing for a while longer
    // (the API server's connection to the kubelet comes back last): longer than a single
    // API call's own retries last, shorter than PICULET_K8S_LOG_RETRY_TIMEOUT.
    env.cluster.faults().fail_requests(
        RequestMatch::new("get", "pods/log"),
        ApiFailure::InternalError,
        1000,
    );
    env.cluster.start_kubelet();
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.cluster.faults().clear_api_faults();
    let p = wait_finished(&env.app, &id, 60).await;
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&env.app, &step_id(&p, "printer")).await;
    let expected: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("+ ")).collect();
    assert_eq!(lines, expected, "{log}");
    assert!(log_answers(&env.cluster, 500) >= 1);
}

/// With the outage outlasting PICULET_K8S_LOG_RETRY_TIMEOUT the rest of the log is given up,
/// and the log says so rather than ending as if complete.
async fn an_outage_past_the_log_retry_timeout_is_written_into_the_log(db: Db) {
    let env = Env::start(db, |s| {
        s.kubernetes.log_retry_timeout = Some("1s".into());
    })
    .await;
    let id = env
        .submit(
            "\
steps:
  - name: printer
    image: busybox:1.36
    commands:
      - for i in $(seq 1 30); do echo line $i; sleep 0.05; done
",
        )
        .await;
    let pod = wait_for_lines(&env.cluster, "printer", 3).await;
    wait_following(&env.cluster).await;
    env.cluster.stop_kubelet();
    // The container ends unseen; the kubelet's status comes back, the logs do not.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    env.cluster.faults().fail_requests(
        RequestMatch::new("get", "pods/log"),
        ApiFailure::InternalError,
        1000,
    );
    env.cluster.start_kubelet();
    let p = wait_finished(&env.app, &id, 60).await;
    env.cluster.faults().clear_api_faults();
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&env.app, &step_id(&p, "printer")).await;
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("piculet: the rest of this log could not be read within 1s (PICULET_K8S_LOG_RETRY_TIMEOUT)"),
        "{log}"
    );
    assert!(log.lines().count() < 32, "{pod}: {log}");
}

on_both_databases!(
    a_kubelet_restart_loses_no_line_and_repeats_none,
    a_step_that_ends_during_a_kubelet_outage_keeps_its_last_lines,
    an_outage_past_the_log_retry_timeout_is_written_into_the_log,
);

/// The restricted profile runs images whose user is root as PICULET_K8S_RUN_AS_USER; with
/// `image`, the kubelet's refusal reaches the user in its own words.
#[tokio::test]
async fn restricted_pods_run_root_images_as_the_configured_user() {
    for (user, ok) in [(None, true), (Some("image"), false)] {
        let dir = temp_dir();
        let cluster = FakeCluster::start_with(FakeConfig {
            fs_root: Some(dir.join("fs")),
            ..FakeConfig::default()
        });
        cluster.set_namespace_label(NS, "pod-security.kubernetes.io/enforce", "restricted");
        let env = Env::start_in(cluster, dir, Db::Postgres, |s| {
            s.kubernetes.pod_security = Some("restricted".into());
            s.kubernetes.run_as_user = user.map(str::to_string);
        })
        .await;
        let p = env
            .run("steps: [{name: build, image: 'busybox:1.36', commands: [echo built]}]")
            .await;
        let build = step(&p, "build");
        if ok {
            assert_eq!(p["status"], "success", "{p:#}");
        } else {
            assert_eq!(build["status"], "error", "{p:#}");
            let reason = build["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with(
                    "CreateContainerConfigError: container has runAsNonRoot and image will run as root (pod: \"build-"
                ) && reason.ends_with(", container: step)"),
                "{reason}"
            );
        }
        assert_eq!(env.wait_clean().await, Vec::<String>::new());
    }
}

#[tokio::test]
async fn an_oom_killed_container_fails_with_its_reason() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    env.cluster
        .faults()
        .oom_kill("hungry", Duration::from_millis(300));
    let p = env
        .run("steps:\n  - name: hungry\n    image: busybox:1.36\n    commands: [echo eating, sleep 30]\n")
        .await;
    let hungry = step(&p, "hungry");
    assert_eq!(hungry["status"], "failure", "{p:#}");
    assert_eq!(hungry["exit_code"], 137);
    assert_eq!(hungry["reason"], "exit code 137 (OOMKilled)", "{hungry:#}");
}

#[tokio::test]
async fn an_evicted_pod_is_never_a_success() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let id = env
        .submit("steps:\n  - name: long\n    image: busybox:1.36\n    commands: [echo started, sleep 30]\n")
        .await;
    let running = wait_step(&env.app, &id, "long", "running", 30).await;
    let pod = env.pod_of(running["id"].as_str().unwrap()).await;
    let name = pod["metadata"]["name"].as_str().unwrap();
    env.cluster
        .wait_for_pod(NS, name, Duration::from_secs(10), |p| {
            p["status"]["phase"] == "Running"
        })
        .await
        .expect("the pod runs");
    assert!(env.cluster.evict_pod(NS, name));
    let p = wait_finished(&env.app, &id, 30).await;
    let long = step(&p, "long");
    assert_eq!(long["status"], "error", "{p:#}");
    assert!(
        long["reason"]
            .as_str()
            .unwrap()
            .starts_with("the pod was evicted: The node was low on resource: memory."),
        "{long:#}"
    );
}

#[tokio::test]
async fn cancel_deletes_the_pods() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let id = env
        .submit("steps:\n  - name: long\n    image: busybox:1.36\n    commands: [sleep 60]\n")
        .await;
    let running = wait_step(&env.app, &id, "long", "running", 30).await;
    env.pod_of(running["id"].as_str().unwrap()).await;
    let r = env
        .app
        .post(&format!("/api/v1/pipelines/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let p = wait_finished(&env.app, &id, 30).await;
    assert_eq!(p["status"], "canceled", "{p:#}");
    assert!(
        env.cluster.count("delete", "pods") >= 1,
        "{:?}",
        env.cluster.verb_counts()
    );
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn another_replica_adopts_a_running_step_and_reads_its_log_on() {
    // No shutdown grace: the step is handed over at once rather than finished here.
    let env = Env::start(Db::Postgres, |s| s.shutdown_grace = Some("0s".into())).await;
    let id = env
        .submit(
            "\
steps:
  - name: counter
    image: busybox:1.36
    commands:
      - for i in $(seq 1 30); do echo line $i; sleep 0.1; done
",
        )
        .await;
    let running = wait_step(&env.app, &id, "counter", "running", 30).await;
    let step = running["id"].as_str().unwrap().to_string();
    // Only a guard against waiting forever: generous, so a loaded machine cannot fail it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log_text(&env.app, &step).await.contains("line 5\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "the first replica stored no lines to hand over"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The first replica stops (as on SIGTERM): it gives the workflow up, the pod runs on.
    env.app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = TestApp::start_sharing(&env.app, env.settings.clone(), true).await;
    let p = wait_finished(&second, &id, 60).await;
    assert_eq!(p["status"], "success", "{p:#}");
    let log = log_text(&second, &step).await;
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(
        lines, expected,
        "every line exactly once across the hand-over: {log}"
    );
    assert_eq!(
        env.cluster.count("create", "pods"),
        1,
        "the step was not started twice"
    );
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
}

#[tokio::test]
async fn with_a_read_write_once_workspace_later_pods_follow_the_first_to_its_node() {
    let env = Env::start(Db::Postgres, |s| {
        s.kubernetes.storage_rwx = Some("false".into());
    })
    .await;
    let id = env
        .submit(
            "\
steps:
  - name: first
    image: busybox:1.36
    commands: [sleep 1]
  - name: second
    image: busybox:1.36
    depends_on: []
    commands: [sleep 1]
",
        )
        .await;
    let pipeline = env.app.pipeline(&id).await;
    let pods = [
        env.pod_of(&step_id(&pipeline, "first")).await,
        env.pod_of(&step_id(&pipeline, "second")).await,
    ];
    // Whichever pod was created first is scheduled freely; the other is pinned to its node.
    let term = |p: &Value| {
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]
            .clone()
    };
    let (free, pinned): (Vec<&Value>, Vec<&Value>) = pods.iter().partition(|p| term(p).is_null());
    assert_eq!((free.len(), pinned.len()), (1, 1), "{pods:#?}");
    let first = env
        .cluster
        .wait_for_pod(
            NS,
            free[0]["metadata"]["name"].as_str().unwrap(),
            Duration::from_secs(10),
            |p| p["spec"]["nodeName"].is_string(),
        )
        .await
        .expect("the first pod is scheduled");
    assert_eq!(
        term(pinned[0]),
        json!({"key": "metadata.name", "operator": "In", "values": [first["spec"]["nodeName"]]})
    );
    let p = wait_finished(&env.app, &id, 30).await;
    assert_eq!(p["status"], "success", "{p:#}");
}

#[tokio::test]
async fn failed_workflows_keep_their_objects_when_asked() {
    let env = Env::start(Db::Postgres, |s| {
        s.kubernetes.keep_failed_pods = Some("true".into());
    })
    .await;
    let ok = env
        .run("steps:\n  - name: fine\n    image: busybox:1.36\n    commands: [true]\n")
        .await;
    assert_eq!(ok["status"], "success", "{ok:#}");
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
    let failed = env
        .run("steps:\n  - name: broken\n    image: busybox:1.36\n    commands: [exit 1]\n")
        .await;
    assert_eq!(failed["status"], "failure", "{failed:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = env.leftovers();
    assert!(
        left.iter().any(|o| o.starts_with("pod/broken-"))
            && left.iter().any(|o| o.starts_with("pvc/")),
        "{left:?}"
    );
}

#[tokio::test]
async fn the_reaper_removes_objects_of_unknown_workflows_at_start_up() {
    let cluster = FakeCluster::start();
    let orphan = uuid::Uuid::now_v7().to_string();
    let labels = json!({
        "app.kubernetes.io/managed-by": "piculet",
        "piculet.dev/workflow-id": orphan,
    });
    cluster
        .create(
            Resource::Secrets,
            NS,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "piculet-orphan-secrets", "labels": labels},
                   "data": {}}),
        )
        .unwrap();
    cluster
        .create(
            Resource::Pods,
            NS,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "orphan-step", "labels": labels},
                   "spec": {"restartPolicy": "Never",
                            "containers": [{"name": "step", "image": "busybox:1.36",
                                            "command": ["sleep", "60"]}]}}),
        )
        .unwrap();
    // Not piculet's: left alone.
    cluster
        .create(
            Resource::Secrets,
            NS,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "someone-elses"}, "data": {}}),
        )
        .unwrap();
    let env = Env::start_on(cluster, Db::Postgres, |_| {}).await;
    assert_eq!(env.wait_clean().await, Vec::<String>::new());
    assert!(
        env.cluster
            .object(Resource::Secrets, NS, "someone-elses")
            .is_some()
    );
}

#[tokio::test]
async fn the_reaper_of_a_starting_replica_leaves_running_workflows_alone() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let id = env
        .submit("steps:\n  - name: long\n    image: busybox:1.36\n    commands: [sleep 2]\n")
        .await;
    let running = wait_step(&env.app, &id, "long", "running", 30).await;
    env.pod_of(running["id"].as_str().unwrap()).await;
    let before = env.leftovers();
    // A second replica starts on the same database and cluster: its reaper runs (in the
    // background: its listing ends with the Services), then has time to delete.
    let listed = env.cluster.count("list", "services");
    let second = TestApp::start_sharing(&env.app, env.settings.clone(), true).await;
    // Only a guard against waiting forever: generous, so a loaded machine cannot fail it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.cluster.count("list", "services") == listed {
        assert!(std::time::Instant::now() < deadline, "the reaper never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.leftovers(),
        before,
        "nothing of the running workflow was deleted"
    );
    let p = wait_finished(&env.app, &id, 30).await;
    assert_eq!(p["status"], "success", "{p:#}");
    drop(second);
}

/// The toleration of Woodpecker's documentation (NoSchedule with tolerationSeconds), which a
/// real API server refuses (recording 82): refused at submission with the API server's field
/// and words and the place in the file, reported by lint as an error there, and nothing is
/// created on the cluster.
const DOCUMENTED_TOLERATION: &str = "\
steps:
  - name: build
    image: busybox:1.36
    commands: [true]
    backend_options:
      kubernetes:
        tolerations:
          - key: key1
            operator: Equal
            value: value1
            effect: NoSchedule
            tolerationSeconds: 3600
";

#[tokio::test]
async fn what_the_api_server_would_refuse_is_refused_at_submission_and_by_lint() {
    let env = Env::start(Db::Sqlite, |s| {
        s.kubernetes.allow_from_step = Some("tolerations".into());
    })
    .await;
    let r = env.app.submit_yaml(DOCUMENTED_TOLERATION).await;
    let problem = common::expect_problem(r, 422, "kubernetes-invalid").await;
    let v = &problem["violations"][0];
    assert_eq!(v["step"], "build");
    assert_eq!(v["field"], "spec.tolerations[0].effect");
    assert_eq!(v["value"], "NoSchedule");
    assert_eq!(
        v["rule"],
        "effect must be 'NoExecute' when `tolerationSeconds` is set"
    );
    assert_eq!(v["config"], "pipeline");
    assert_eq!(
        v["pointer"],
        "/steps/0/backend_options/kubernetes/tolerations/0/effect"
    );
    assert_eq!(
        (v["line"].as_u64(), v["column"].as_u64()),
        (Some(11), Some(21))
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("spec.tolerations[0].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set"),
        "{problem:#}"
    );
    assert_eq!(env.app.pipeline_count().await, 0, "nothing stored");
    assert!(
        env.cluster.requests().iter().all(|r| r.verb != "create"),
        "nothing created on the cluster"
    );

    let r = env
        .app
        .post("/api/v1/lint")
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(DOCUMENTED_TOLERATION)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lint: Value = r.json().await.unwrap();
    assert_eq!(lint["valid"], false, "{lint:#}");
    let e = &lint["errors"][0];
    assert_eq!(
        (&e["config"], &e["pointer"], &e["line"], &e["column"]),
        (
            &json!("pipeline"),
            &json!("/steps/0/backend_options/kubernetes/tolerations/0/effect"),
            &json!(11),
            &json!(21)
        )
    );
    // The same with NoExecute is taken and runs.
    let p = env
        .run(&DOCUMENTED_TOLERATION.replace("NoSchedule", "NoExecute"))
        .await;
    assert_eq!(p["status"], "success", "{p:#}");
}

/// `workspaceVolume: false`: the service's and the step's pods run without the workspace
/// volume, and with a ReadWriteOnce workspace they are not pinned to its node.
#[tokio::test]
async fn steps_and_services_without_the_workspace_volume_run() {
    let env = Env::start(Db::Sqlite, |s| {
        s.kubernetes.storage_rwx = Some("false".into());
    })
    .await;
    let id = env
        .submit(
            "\
services:
  - name: cache
    image: busybox:1.36
    commands: [sleep 30]
    backend_options: {kubernetes: {workspaceVolume: false}}
steps:
  - name: build
    image: busybox:1.36
    commands: [echo built > out.txt]
  - name: notify
    image: busybox:1.36
    commands: [echo notified]
    backend_options: {kubernetes: {workspaceVolume: false}}
",
        )
        .await;
    let pipeline = env.app.pipeline(&id).await;
    for name in ["cache", "notify"] {
        let pod = env.pod_of(&step_id(&pipeline, name)).await;
        let volumes = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            volumes.iter().all(|v| v["persistentVolumeClaim"].is_null()),
            "{name}: {volumes:#?}"
        );
        assert!(
            pod["spec"]["affinity"].is_null(),
            "{name} is not pinned to the workspace's node"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["workingDir"],
            "/woodpecker/src"
        );
    }
    let p = wait_finished(&env.app, &id, 30).await;
    assert_eq!(p["status"], "success", "{p:#}");
    let notify = step(&p, "notify");
    assert!(
        log_text(&env.app, notify["id"].as_str().unwrap())
            .await
            .contains("notified")
    );
}

#[tokio::test]
async fn readyz_names_a_missing_permission() {
    let env = Env::start(Db::Postgres, |_| {}).await;
    let r = env.app.get("/api/v1/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // A fresh server: the answer is cached for a while.
    let env = Env::start(Db::Postgres, |_| {}).await;
    env.cluster.faults().set_access("delete", "pods", "", false);
    env.cluster.faults().set_access("get", "pods", "log", false);
    let r = env.app.get("/api/v1/readyz").send().await.unwrap();
    let problem = common::expect_problem(r, 503, "unavailable").await;
    assert_eq!(
        problem["detail"],
        "piculet lacks permissions in namespace piculet: delete pods, get pods/log; grant them \
         with a Role such as deploy/role.yaml"
    );
}

#[test]
fn deploy_role_grants_exactly_what_the_backend_checks() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/role.yaml")).unwrap();
    let role: Value = serde_saphyr::from_str(&text).unwrap();
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["apiGroups"], json!([""]), "{rule}");
        for resource in rule["resources"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                granted.push(format!(
                    "{} {}",
                    verb.as_str().unwrap(),
                    resource.as_str().unwrap()
                ));
            }
        }
    }
    let mut required: Vec<String> = piculet::backend::kubernetes::access::REQUIRED
        .iter()
        .map(|(verb, resource, sub)| {
            if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            }
        })
        .collect();
    granted.sort();
    required.sort();
    assert_eq!(granted, required);
}
