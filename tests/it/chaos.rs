//! Chaos, bounded: real `piculet serve` processes on one Postgres with the local backend,
//! killed with `kill -9` or stopped with SIGTERM while pipelines run, and restarted. At the
//! end every pipeline succeeded, no step attempt ran twice, and each execution of a step has
//! every line it printed stored exactly once, in order.
//!
//! Each step appends `<pipeline> <step> <pid>` to `starts` in a shared directory when it
//! begins (the pid marks the execution), then prints numbered lines slowly, recording each
//! in `printed` once it is written. Postgres only: SQLite is one replica.
//!
//! Last, the replica that holds a concurrency group's place is killed: the place stays taken
//! until the workflow ends under the replica that adopts it, and no two workflows of the group
//! ever run at once.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Db, TestApp, log_text, wait_finished};
use serde_json::{Value, json};

/// Lines each step prints, one every 100 ms.
const LINES: u32 = 12;
/// Steps of each pipeline, one after another.
const STEPS: usize = 3;
/// More attempts than any step should need, so that a step run again shows as an attempt
/// above 1 rather than as an `error` that hides how it came about.
const MAX_ATTEMPTS: &str = "6";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `piculet serve` process, to kill or to stop.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(app: &TestApp, data_dir: &Path, name: &str, args: &[&str]) -> Server {
        let port = free_port();
        // PICULET_CHAOS_LOGS=<dir> keeps the replicas' server logs there.
        let log = match std::env::var_os("PICULET_CHAOS_LOGS") {
            Some(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&dir).join(format!("{name}.log")))
                .unwrap()
                .into(),
            None => std::process::Stdio::null(),
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_piculet"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lease",
                "2s",
            ])
            .args(args)
            .env("PICULET_DATABASE_URL", &app.database_url)
            .env("PICULET_DATA_DIR", data_dir)
            .env("PICULET_API_TOKENS", common::TOKEN)
            .env("PICULET_MAX_ATTEMPTS", MAX_ATTEMPTS)
            .env("PICULET_LOG", "info,piculet=debug")
            // Leases are held in the name `<HOSTNAME>/<uuid>`: which replica holds one.
            .env("HOSTNAME", name)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/api/v1/healthz", server.base))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "piculet serve did not come up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        server
    }

    fn kill9(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit; a clean one is expected.
    fn terminate(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "a clean exit on SIGTERM: {status}");
    }
}

/// The shared directory and a fresh Postgres for one chaos run.
struct Chaos {
    app: TestApp,
    /// The replicas' data directory (shared, as local replicas must).
    data_dir: PathBuf,
    /// Where the steps record what they did.
    shared: PathBuf,
    pipelines: Vec<String>,
}

impl Chaos {
    async fn new() -> Chaos {
        let app = TestApp::spawn_api(Db::Postgres).await;
        let data_dir = app.data_dir.join("replicas");
        let shared = app.data_dir.join("shared");
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        Chaos {
            app,
            data_dir,
            shared,
            pipelines: Vec::new(),
        }
    }

    async fn server(&self, name: &str, args: &[&str]) -> Server {
        Server::start(&self.app, &self.data_dir, name, args).await
    }

    /// A pipeline of [`STEPS`] steps in a row, each printing [`LINES`] numbered lines.
    async fn submit(&mut self, through: &Server) {
        let shared = self.shared.display();
        let script = format!(
            "m=\"$CI_PIPELINE_ID $CI_STEP_NAME $$\"; echo \"$m\" >> {shared}/starts; i=1; \
             while [ $i -le {LINES} ]; do echo \"$m line $i\"; echo \"$m line $i\" >> {shared}/printed; \
             i=$((i+1)); sleep 0.1; done"
        );
        let steps: Vec<Value> = (1..=STEPS)
            .map(|n| json!({"name": format!("s{n}"), "image": "alpine", "commands": [script]}))
            .collect();
        let body = json!({"pipeline": {"steps": steps}});
        let p: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/pipelines", through.base))
            .header("authorization", format!("Bearer {}", common::TOKEN))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        self.pipelines
            .push(p["id"].as_str().expect("a pipeline").to_string());
    }

    /// Waits until some step of the newest pipeline runs.
    async fn wait_running(&self) {
        let id = self.pipelines.last().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.app.pipeline(id).await;
            let running = p["workflows"][0]["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["status"] == "running"));
            if running {
                return;
            }
            assert!(Instant::now() < deadline, "nothing of {id} ran: {p:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every pipeline succeeded with every step; no attempt ran twice; every line printed
    /// was stored exactly once, in order. `attempts`: what the stored attempts may be.
    async fn check(&self, attempts: impl Fn(u64) -> bool) {
        let mut finished = Vec::new();
        for id in &self.pipelines {
            finished.push((id, wait_finished(&self.app, id, 120).await));
        }
        let starts = read_lines(&self.shared.join("starts"));
        let mut rerun = 0;
        let printed = read_lines(&self.shared.join("printed"));
        // Per execution (pipeline, step, pid): the highest line it printed.
        let mut printed_upto: BTreeMap<String, u32> = BTreeMap::new();
        for line in &printed {
            let (execution, n) = split_line(line).unwrap_or_else(|| panic!("{line:?}"));
            let upto = printed_upto.entry(execution).or_default();
            *upto = (*upto).max(n);
        }
        for (id, p) in finished {
            assert_eq!(p["status"], "success", "{p:#}");
            for step in p["workflows"][0]["steps"].as_array().unwrap() {
                let name = step["name"].as_str().unwrap();
                assert_eq!(step["status"], "success", "{step}");
                let attempt = step["attempt"].as_u64().unwrap();
                assert!(attempts(attempt), "attempt {attempt} of {name}: {step}");
                rerun += u64::from(attempt > 1);
                // No (step, attempt) executed twice: each execution is an attempt of its own.
                let prefix = format!("{id} {name} ");
                let executions: BTreeSet<&String> =
                    starts.iter().filter(|s| s.starts_with(&prefix)).collect();
                assert!(
                    !executions.is_empty() && executions.len() as u64 <= attempt,
                    "{name} of {id} ran {} times in {attempt} attempts: {executions:?}",
                    executions.len()
                );
                // Each execution's lines: 1..k in order, once each, k at least what it
                // printed; executions one after another, never interleaved.
                let log = log_text(&self.app, step["id"].as_str().unwrap()).await;
                let mut order: Vec<String> = Vec::new();
                let mut next: BTreeMap<String, u32> = BTreeMap::new();
                // The step's own lines; the shell's trace and piculet's notices aside.
                for line in log.lines().filter(|l| l.starts_with(&prefix)) {
                    let (execution, n) = split_line(line)
                        .unwrap_or_else(|| panic!("an odd line {line:?} in {name}:\n{log}"));
                    let expected = next.entry(execution.clone()).or_insert(1);
                    assert_eq!(n, *expected, "{execution}: line {n} out of place:\n{log}");
                    *expected += 1;
                    if order.last() != Some(&execution) {
                        assert!(
                            !order.contains(&execution),
                            "{execution} interleaved with another execution:\n{log}"
                        );
                        order.push(execution);
                    }
                }
                for execution in &executions {
                    let stored = next.get(*execution).map_or(0, |n| n - 1);
                    let upto = printed_upto.get(*execution).copied().unwrap_or(0);
                    assert!(
                        stored >= upto,
                        "{execution} printed {upto} lines, {stored} stored:\n{log}"
                    );
                }
                let last = order.last().expect("some output");
                assert_eq!(
                    next[last] - 1,
                    LINES,
                    "the last execution ran to its end:\n{log}"
                );
            }
        }
        eprintln!(
            "{} steps, {} executions, {rerun} steps run again after an interruption",
            self.pipelines.len() * STEPS,
            starts.len()
        );
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `<pipeline> <step> <pid> line <n>` → (`<pipeline> <step> <pid>`, n).
fn split_line(line: &str) -> Option<(String, u32)> {
    let (execution, n) = line.rsplit_once(" line ")?;
    Some((execution.to_string(), n.parse().ok()?))
}

/// A pseudo-random pause from 300 ms to 1.5 s, the same for each run of the test.
fn pause(cycle: u64) -> Duration {
    Duration::from_millis(300 + (cycle * 7919 + 104_729) % 1200)
}

// Local steps outlive their replica (a durable record, output in a file): the next replica
// re-attaches, so no kill costs a step an attempt.
#[tokio::test]
async fn kill_9_cycles_start_no_step_twice_and_lose_no_line() {
    let started = Instant::now();
    let mut chaos = Chaos::new().await;
    let mut replicas = [chaos.server("a", &[]).await, chaos.server("b", &[]).await];
    for _ in 0..4 {
        chaos.submit(&replicas[0]).await;
    }
    for cycle in 0..20u64 {
        tokio::time::sleep(pause(cycle)).await;
        let victim = (cycle % 2) as usize;
        replicas[victim].kill9();
        let name = if victim == 0 { "a" } else { "b" };
        replicas[victim] = chaos.server(name, &[]).await;
        if cycle % 4 == 0 {
            let through = &replicas[1 - victim];
            chaos.submit(through).await;
        }
    }
    chaos.check(|attempt| attempt == 1).await;
    eprintln!(
        "20 kill -9 cycles, {} pipelines of {STEPS} steps: {:?}",
        chaos.pipelines.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_restarts_let_running_steps_finish_within_the_grace() {
    let mut chaos = Chaos::new().await;
    let mut replica = chaos.server("a", &["--shutdown-grace", "60s"]).await;
    for _ in 0..4 {
        chaos.submit(&replica).await;
        chaos.wait_running().await;
        // The pipeline's steps go on, one after another, until the workflow ends; then the
        // replica exits.
        replica.terminate();
        let p = chaos.app.pipeline(chaos.pipelines.last().unwrap()).await;
        assert_eq!(p["status"], "success", "finished before the exit: {p:#}");
        replica = chaos.server("a", &["--shutdown-grace", "60s"]).await;
    }
    // Nothing was run again: one attempt each.
    chaos.check(|attempt| attempt == 1).await;
}

// The steps handed over keep running and are re-attached: none runs again.
#[tokio::test]
async fn sigterm_restarts_past_the_grace_hand_the_steps_over() {
    let mut chaos = Chaos::new().await;
    let args = ["--shutdown-grace", "300ms"];
    let mut replica = chaos.server("a", &args).await;
    for cycle in 0..5u64 {
        chaos.submit(&replica).await;
        chaos.wait_running().await;
        tokio::time::sleep(pause(cycle) / 2).await;
        replica.terminate();
        // Handed over, not failed: the steps are running as far as the database knows.
        for id in &chaos.pipelines {
            let p = chaos.app.pipeline(id).await;
            assert!(
                matches!(p["status"].as_str(), Some("running" | "success" | "queued")),
                "{p:#}"
            );
        }
        replica = chaos.server("a", &args).await;
    }
    chaos.check(|attempt| attempt == 1).await;
}

/// The lease owner's replica (its `HOSTNAME`) of every running workflow of the group.
async fn holders(db: &sqlx::PgPool, group: &str) -> Vec<String> {
    let owners: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT lease_owner FROM workflows WHERE concurrency_group = $1 AND status = 'running'",
    )
    .bind(group)
    .fetch_all(db)
    .await
    .unwrap();
    owners
        .into_iter()
        .map(|(o,)| {
            o.unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

// One group, limit 1: the first deploy's replica is killed while its step runs on (the
// adopter re-attaches to it and keeps the place), the second's right as its short step starts
// (the step ends while no replica holds the lease; the adopter records it and the next deploy
// runs). Throughout, at most one deploy runs, as the database says and as the steps' own
// clocks say.
#[tokio::test]
async fn kill_9_of_the_replica_holding_a_concurrency_place() {
    let started = Instant::now();
    let chaos = Chaos::new().await;
    let db = sqlx::PgPool::connect(&chaos.app.database_url)
        .await
        .unwrap();
    let mut replicas = [chaos.server("a", &[]).await, chaos.server("b", &[]).await];
    let shared = chaos.shared.display().to_string();
    let mut ids = Vec::new();
    for (i, seconds) in ["3", "1", "0.5", "0.5"].into_iter().enumerate() {
        let script = format!(
            "echo \"start $CI_PIPELINE_ID $(date +%s%N)\" >> {shared}/deploys; sleep {seconds}; \
             echo \"end $CI_PIPELINE_ID $(date +%s%N)\" >> {shared}/deploys"
        );
        let body = json!({"pipeline": {
            "concurrency": {"limit": 1, "group": "deploy"},
            "steps": [{"name": "deploy", "image": "alpine", "commands": [script]}],
        }});
        let p: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/pipelines", replicas[i % 2].base))
            .header("authorization", format!("Bearer {}", common::TOKEN))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(p["id"].as_str().expect("a pipeline").to_string());
    }

    // The database's view, sampled throughout: never two running.
    let watch = tokio::spawn({
        let db = db.clone();
        async move {
            let mut most = 0;
            loop {
                most = most.max(holders(&db, "deploy").await.len());
                if most > 1 {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    for (victim_of, after) in [(0usize, Duration::from_millis(500)), (1, Duration::ZERO)] {
        // Wait for the deploy's step to run — its script has written its start, so the kill
        // cannot land between the recorded start and the launch, where running the attempt
        // again is the protocol's answer — then kill the replica that holds its place.
        let deadline = Instant::now() + Duration::from_secs(60);
        let began = format!("start {} ", ids[victim_of]);
        let holder = loop {
            let p = chaos.app.pipeline(&ids[victim_of]).await;
            let step_runs = p["workflows"][0]["steps"][0]["status"] == "running"
                && read_lines(&chaos.shared.join("deploys"))
                    .iter()
                    .any(|l| l.starts_with(&began));
            let holder = holders(&db, "deploy").await;
            if step_runs && holder.len() == 1 {
                break holder[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "deploy {victim_of} never ran: {p:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(after).await;
        let victim = usize::from(holder == "b");
        replicas[victim].kill9();
        replicas[victim] = chaos.server(&holder, &[]).await;
    }

    let mut finished = Vec::new();
    for id in &ids {
        let p = wait_finished(&chaos.app, id, 120).await;
        assert_eq!(p["status"], "success", "{p:#}");
        let step = &p["workflows"][0]["steps"][0];
        assert_eq!(step["attempt"], 1, "adopted, not run again: {step}");
        finished.push(p);
    }
    assert!(!watch.is_finished(), "two deploys ran at once");
    watch.abort();
    // The two whose replica died were adopted: claimed again, by the lease's takeover.
    for id in &ids[..2] {
        let (claims,): (i32,) =
            sqlx::query_as("SELECT claims FROM workflows WHERE pipeline_id = CAST($1 AS uuid)")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(claims >= 2, "{id} was claimed {claims} times");
    }

    // The steps' own clocks: one start and one end each, every deploy after the one before.
    let lines = read_lines(&chaos.shared.join("deploys"));
    let at = |what: &str, id: &str| -> u128 {
        let found: Vec<u128> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{what} {id} ")))
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(found.len(), 1, "{what} of {id} in {lines:?}");
        found[0]
    };
    for pair in ids.windows(2) {
        assert!(
            at("start", &pair[1]) > at("end", &pair[0]),
            "{} started before {} ended: {lines:?}",
            pair[1],
            pair[0]
        );
    }
    eprintln!(
        "4 deploys of one group, the place holder killed twice: {:?}",
        started.elapsed()
    );
}
