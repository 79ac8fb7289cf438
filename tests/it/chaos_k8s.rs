//! Chaos on the fake cluster: two real `piculet serve --backend kubernetes` processes on one
//! Postgres, pointed over TCP at the fake API server, while pipelines of several steps run; one
//! replica at a time is killed with SIGKILL and started again, 20 times. Afterwards every
//! pipeline must have succeeded, no pod may have been created twice for the same step attempt,
//! no step's script may have run twice, and every step's log must hold each of its lines
//! exactly once.
//!
//! Postgres only: SQLite is one replica. Bounded: the kills take about a minute, the wait for
//! the last pipelines at most `FINISH_WITHIN` more.

use crate::common;
use piculet_fake_k8s as fake_k8s;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Db, TestApp, log_text, step_id, wait_finished};
use fake_k8s::{FakeCluster, FakeConfig, Resource};
use serde_json::Value;

const NS: &str = "piculet";
const KILLS: usize = 20;
const STEPS: [&str; 3] = ["first", "second", "third"];
const LINES: usize = 20;
/// How long the last pipelines may take after the last kill (a replica's lease is 2 s).
const FINISH_WITHIN: u64 = 40;

/// A `piculet serve` process; killed with SIGKILL when dropped.
struct Replica {
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Replica {
    async fn start(database_url: &str, data_dir: &Path, kubeconfig: &Path) -> Replica {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_piculet"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lease",
                "2s",
                "--backend",
                "kubernetes",
            ])
            .env("PICULET_DATABASE_URL", database_url)
            .env("PICULET_DATA_DIR", data_dir)
            .env("PICULET_API_TOKENS", common::TOKEN)
            .env("PICULET_K8S_KUBECONFIG", kubeconfig)
            .env("PICULET_K8S_NAMESPACE", NS)
            .env("PICULET_K8S_START_TIMEOUT", "20s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let replica = Replica { child };
        let health = format!("http://127.0.0.1:{port}/api/v1/healthz");
        for _ in 0..200 {
            if reqwest::get(&health).await.is_ok() {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("piculet serve did not come up");
    }
}

/// A pipeline of three steps, each recording that it started in `runs` (a file on this
/// machine: the fake kubelet runs scripts as local processes) and then printing its lines.
fn pipeline(n: usize, runs: &Path) -> String {
    let mut yaml = String::from("steps:\n");
    for step in STEPS {
        yaml.push_str(&format!(
            "  - name: {step}\n    image: busybox:1.36\n    commands:\n      - echo p{n}-{step} >> {runs}\n      - for i in $(seq 1 {LINES}); do echo line $i; sleep 0.05; done\n",
            runs = runs.display()
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_a_replica_run_every_step_once_and_keep_every_line() {
    // The API-only app gives a fresh database and a client; the replicas under test are real
    // processes.
    let app = TestApp::spawn_api(Db::Postgres).await;
    let dir: PathBuf = app.data_dir.join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = FakeCluster::start_with(FakeConfig {
        fs_root: Some(dir.join("fs")),
        ..FakeConfig::default()
    });
    let url = cluster.serve_tcp().await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    fake_k8s::write_kubeconfig(&kubeconfig, &url).unwrap();
    let runs = dir.join("runs");
    std::fs::write(&runs, "").unwrap();
    let data_dir = dir.join("data");

    let mut replicas = [
        Replica::start(&app.database_url, &data_dir, &kubeconfig).await,
        Replica::start(&app.database_url, &data_dir, &kubeconfig).await,
    ];
    let mut ids = Vec::new();
    for kill in 0..KILLS {
        // New work keeps arriving while replicas die.
        let r = app.submit_yaml(&pipeline(kill, &runs)).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_string());
        // Kill at a varying point of a step's life: before its pod, mid-log, at its end.
        const AFTER_MS: [u64; 5] = [50, 700, 1000, 1300, 1900];
        tokio::time::sleep(Duration::from_millis(AFTER_MS[kill % AFTER_MS.len()])).await;
        let victim = kill % 2;
        let _ = replicas[victim].child.kill();
        let _ = replicas[victim].child.wait();
        replicas[victim] = Replica::start(&app.database_url, &data_dir, &kubeconfig).await;
    }

    let mut failures = Vec::new();
    let mut pipelines = Vec::new();
    for id in &ids {
        let p = wait_finished(&app, id, FINISH_WITHIN).await;
        if p["status"] != "success" {
            failures.push(format!("{id}: {p:#}"));
        }
        pipelines.push(p);
    }

    // No pod created twice for the same step attempt (the name is deterministic per attempt).
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for r in cluster.requests() {
        if r.verb == "create" && r.resource == "pods" && r.status == 201 {
            *creates
                .entry(r.created.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();

    // No script started twice.
    let mut started: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&runs).unwrap().lines() {
        *started.entry(line.to_string()).or_default() += 1;
    }
    let ran_twice: Vec<_> = started.iter().filter(|(_, n)| **n > 1).collect();

    // Every line exactly once, in order.
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line {i}")).collect();
    let mut bad_logs = Vec::new();
    for p in pipelines.iter().filter(|p| p["status"] == "success") {
        for step in STEPS {
            let log = log_text(&app, &step_id(p, step)).await;
            let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("line ")).collect();
            if lines != expected {
                bad_logs.push(format!("{} {step}: {log}", p["id"]));
            }
        }
    }
    let leftover_pods = cluster.objects(Resource::Pods, Some(NS)).len();
    // Log reads from a point (a stream resumed on the same replica, or by an adopting one).
    let resumed = cluster
        .requests()
        .iter()
        .filter(|r| r.resource == "pods/log" && r.query.contains("sinceTime"))
        .count();
    drop(replicas);

    assert!(
        failures.is_empty(),
        "{} of {} pipelines did not succeed:\n{}",
        failures.len(),
        ids.len(),
        failures.join("\n")
    );
    assert!(twice.is_empty(), "pods created twice: {twice:?}");
    assert!(ran_twice.is_empty(), "steps started twice: {ran_twice:?}");
    assert!(
        bad_logs.is_empty(),
        "logs lost or repeated lines:\n{}",
        bad_logs.join("\n")
    );
    assert_eq!(
        started.len(),
        ids.len() * STEPS.len(),
        "every step ran: {started:?}"
    );
    // Printed for the report, not asserted: pods of finished workflows are deleted at their end.
    println!(
        "chaos: {KILLS} kills, {} pipelines, {} pod creates, {resumed} log reads with \
         sinceTime, {leftover_pods} pods left",
        ids.len(),
        creates.values().sum::<usize>()
    );
}
