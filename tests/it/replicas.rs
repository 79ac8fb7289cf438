//! Two replicas on one Postgres: a step run by one, followed live on the other. The streams are
//! read over real HTTP and parsed by `eventsource-stream`, a parser independent of piculet's.
//! Postgres only: SQLite serves one replica.

use crate::common;
use piculet_fake_k8s as fake_k8s;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Db, TestApp, step_id, wait_finished};
use eventsource_stream::{Event, Eventsource as _};
use futures::StreamExt as _;
use piculet::config::Settings;
use serde_json::Value;
use sqlx::Connection as _;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long any one wait of these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Replica A serves the API alone; replica B, on the same database, runs the engine.
async fn two_replicas() -> (TestApp, TestApp) {
    let a = TestApp::start(Db::Postgres, Settings::default(), false).await;
    let b = TestApp::start_sharing(&a, Settings::default(), true).await;
    (a, b)
}

/// A file the step waits for (at most a minute) before printing; the test creates it once its
/// followers are subscribed, so that every line they get comes live, not from their replay.
fn gate(app: &TestApp) -> PathBuf {
    app.data_dir.join(format!("gate-{}", Uuid::now_v7()))
}

fn wait_for(gate: &Path) -> String {
    format!(
        "for i in $(seq 1 1200); do [ -e {} ] && break; sleep 0.05; done",
        gate.display()
    )
}

fn open(gate: &Path) {
    std::fs::write(gate, b"").unwrap();
}

/// An SSE stream read by a task of its own into a channel, so that the test can look at what
/// has arrived while the stream goes on.
struct Follower {
    rx: mpsc::UnboundedReceiver<Event>,
    got: Vec<Event>,
}

impl Follower {
    /// Connects; once this returns the server has subscribed the stream to the live feed
    /// (it does so before it answers).
    async fn connect(app: &TestApp, path: &str) -> Follower {
        let response = app
            .get(path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut events = response.bytes_stream().eventsource();
            while let Some(event) = events.next().await {
                if tx.send(event.expect("a well-formed event stream")).is_err() {
                    break;
                }
            }
        });
        Follower {
            rx,
            got: Vec::new(),
        }
    }

    /// Reads until an event satisfies `done`; fails after [`PATIENCE`] or if the stream ends.
    async fn until(&mut self, what: &str, done: impl Fn(&Event) -> bool) {
        let read = tokio::time::timeout(PATIENCE, async {
            while let Some(event) = self.rx.recv().await {
                let finished = done(&event);
                self.got.push(event);
                if finished {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            read == Ok(true),
            "{what}: not there (the stream {}) after {} events: {:?}",
            if read.is_err() { "stalled" } else { "ended" },
            self.got.len(),
            self.got.last()
        );
    }

    /// Reads to the `end` event, then checks that the stream closes after it.
    async fn read_to_the_end(&mut self) {
        self.until("the end event", |e| e.event == "end").await;
        let closed = tokio::time::timeout(PATIENCE, self.rx.recv()).await;
        assert!(
            matches!(closed, Ok(None)),
            "the stream goes on after its end"
        );
    }

    /// The ids of the events before the end, checked to run 1, 2, 3… with neither gap nor
    /// repeat.
    fn numbered(&self) -> Vec<&Event> {
        let items: Vec<&Event> = self.got.iter().filter(|e| e.event != "end").collect();
        let ids: Vec<i64> = items.iter().map(|e| e.id.parse().unwrap()).collect();
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "ids");
        items
    }

    fn end(&self) -> Value {
        let end = self.got.last().expect("an end event");
        assert_eq!(end.event, "end");
        serde_json::from_str(&end.data).unwrap()
    }
}

fn text_of(line: &Event) -> String {
    let line: Value = serde_json::from_str(&line.data).unwrap();
    line["text"].as_str().unwrap().to_string()
}

/// The step's own output: its lines but the echo (`+ cmd`) of each command and piculet's
/// notices.
fn printed(lines: &Follower) -> Vec<String> {
    lines
        .numbered()
        .into_iter()
        .map(text_of)
        .filter(|t| !t.starts_with("+ ") && !t.starts_with("piculet: "))
        .collect()
}

/// The ids of the listener backends of every replica on the app's database.
async fn listeners(app: &TestApp) -> Vec<i32> {
    let mut conn = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let pids: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = $1 ORDER BY pid",
    )
    .bind(piculet::store::FEED_LISTENER_NAME)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    pids.into_iter().map(|(p,)| p).collect()
}

/// Waits until exactly `n` listeners are connected, none of them one of `gone`; returns them.
async fn wait_for_listeners(app: &TestApp, n: usize, gone: &[i32]) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = listeners(app).await;
        if now.len() == n && now.iter().all(|p| !gone.contains(p)) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {n} new listeners: {now:?}, gone {gone:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(app: &TestApp, yaml: &str) -> Value {
    let response = app.submit_yaml(yaml).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

#[tokio::test]
async fn followers_on_the_replica_that_does_not_run_the_step_get_everything_live() {
    let (a, b) = two_replicas().await;
    let gate = gate(&a);
    let p = submit(
        &a,
        &format!(
            "steps:\n  - name: noisy\n    image: alpine\n    commands:\n      - '{}'\n      - 'for i in $(seq 1 60); do echo line $i; sleep 0.01; done'\n",
            wait_for(&gate)
        ),
    )
    .await;
    let (pipeline, step) = (p["id"].as_str().unwrap().to_string(), step_id(&p, "noisy"));
    let mut lines = Follower::connect(&a, &format!("/api/v1/steps/{step}/logs")).await;
    let mut events = Follower::connect(&a, &format!("/api/v1/pipelines/{pipeline}/events")).await;
    open(&gate);

    lines.read_to_the_end().await;
    events.read_to_the_end().await;
    let texts = printed(&lines);
    let expected: Vec<String> = (1..=60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(texts, expected, "every line once, in order");
    assert_eq!(lines.end()["status"], "success");
    assert_eq!(events.end()["status"], "success");

    // The live stream holds exactly what a replay of the finished pipeline holds.
    let live: Vec<(String, String)> = events
        .numbered()
        .into_iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect();
    let mut replay = Follower::connect(&b, &format!("/api/v1/pipelines/{pipeline}/events")).await;
    replay.read_to_the_end().await;
    let replayed: Vec<(String, String)> = replay
        .numbered()
        .into_iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect();
    assert_eq!(live, replayed);
    assert_eq!(wait_finished(&a, &pipeline, 60).await["status"], "success");
}

#[tokio::test]
async fn a_listener_that_loses_its_connection_still_delivers_everything() {
    let (a, _b) = two_replicas().await;
    let (first, second) = (gate(&a), gate(&a));
    let p = submit(
        &a,
        &format!(
            "steps:\n  - name: noisy\n    image: alpine\n    commands:\n      - '{}'\n      - 'for i in $(seq 1 20); do echo line $i; done'\n      - '{}'\n      - 'for i in $(seq 21 40); do echo line $i; done'\n",
            wait_for(&first),
            wait_for(&second)
        ),
    )
    .await;
    let (pipeline, step) = (p["id"].as_str().unwrap().to_string(), step_id(&p, "noisy"));
    let mut lines = Follower::connect(&a, &format!("/api/v1/steps/{step}/logs")).await;
    let mut events = Follower::connect(&a, &format!("/api/v1/pipelines/{pipeline}/events")).await;
    open(&first);
    lines
        .until("line 20", |e| e.data.contains("\"line 20\\n\""))
        .await;

    // Both replicas' listeners lose their connections; the rest of the step runs at once,
    // so that its lines and end are stored while they reconnect.
    let before = wait_for_listeners(&a, 2, &[]).await;
    let mut conn = sqlx::PgConnection::connect(&a.database_url).await.unwrap();
    for pid in &before {
        let (ended,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(ended, "backend {pid} terminated");
    }
    conn.close().await.ok();
    open(&second);

    lines.read_to_the_end().await;
    events.read_to_the_end().await;
    let texts = printed(&lines);
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(texts, expected, "every line once, in order");
    assert_eq!(lines.end()["status"], "success");
    assert_eq!(events.end()["status"], "success");

    // The listeners are back on new connections.
    wait_for_listeners(&a, 2, &before).await;

    // And they deliver what comes next: a second pipeline, followed from its start.
    let gate = gate(&a);
    let p = submit(
        &a,
        &format!(
            "steps:\n  - name: after\n    image: alpine\n    commands: ['{}', 'echo after']\n",
            wait_for(&gate)
        ),
    )
    .await;
    let mut lines =
        Follower::connect(&a, &format!("/api/v1/steps/{}/logs", step_id(&p, "after"))).await;
    open(&gate);
    lines.read_to_the_end().await;
    let texts = printed(&lines);
    assert_eq!(texts, ["after\n"]);
}

#[tokio::test]
async fn a_quiet_listener_proves_its_connection_with_heartbeats_and_keeps_it() {
    let settings = Settings {
        feed_heartbeat: Some("1s".into()),
        ..Settings::default()
    };
    let a = TestApp::start(Db::Postgres, settings, false).await;
    let listener = wait_for_listeners(&a, 1, &[]).await;
    // Nothing is stored, so the listener hears only its heartbeats, sent through the API's
    // pool; two of them mean the first came back in time, or the second would have gone out
    // after a reconnect, on a new listener connection.
    let mut conn = sqlx::PgConnection::connect(&a.database_url).await.unwrap();
    let mut sent = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sent.len() < 2 {
        let starts: Vec<(chrono::DateTime<chrono::Utc>,)> = sqlx::query_as(
            "SELECT query_start FROM pg_stat_activity WHERE datname = current_database() \
             AND query = 'SELECT pg_notify($1, $2)' AND query_start IS NOT NULL",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        sent.extend(starts.into_iter().map(|(s,)| s));
        assert!(
            tokio::time::Instant::now() < deadline,
            "no two heartbeats: {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close().await.ok();
    assert_eq!(
        listeners(&a).await,
        listener,
        "the same connection throughout"
    );
}

#[tokio::test]
async fn a_follower_gets_every_line_when_the_replica_running_the_step_stops_and_another_adopts_it()
{
    // The Kubernetes backend against the fake cluster: its pods outlive a replica, so another
    // one adopts the step and stores the rest of its log.
    let dir = std::env::temp_dir().join(format!("piculet-replicas-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = fake_k8s::FakeCluster::start_with(fake_k8s::FakeConfig {
        fs_root: Some(dir.join("fs")),
        ..fake_k8s::FakeConfig::default()
    });
    let url = cluster.serve_tcp().await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    fake_k8s::write_kubeconfig(&kubeconfig, &url).unwrap();
    let mut settings = Settings {
        backend: Some("kubernetes".into()),
        grace_period: Some("1s".into()),
        ..Settings::default()
    };
    settings.kubernetes.kubeconfig = Some(kubeconfig.display().to_string());
    settings.kubernetes.namespace = Some("piculet".into());
    settings.kubernetes.start_timeout = Some("3s".into());

    let runner = TestApp::start(Db::Postgres, settings.clone(), true).await;
    let follower = TestApp::start_sharing(&runner, settings.clone(), false).await;
    let p = submit(
        &follower,
        "steps:\n  - name: counter\n    image: busybox:1.36\n    commands:\n      - for i in $(seq 1 30); do echo line $i; sleep 0.1; done\n",
    )
    .await;
    let (pipeline, step) = (
        p["id"].as_str().unwrap().to_string(),
        step_id(&p, "counter"),
    );
    let mut lines = Follower::connect(&follower, &format!("/api/v1/steps/{step}/logs")).await;
    let mut events =
        Follower::connect(&follower, &format!("/api/v1/pipelines/{pipeline}/events")).await;
    lines
        .until("line 5", |e| e.data.contains("\"line 5\\n\""))
        .await;

    // The running replica stops (as on SIGTERM); its pod runs on and a third replica adopts
    // the step. The follower's stream stays open throughout.
    runner.shutdown.cancel();
    let adopter = TestApp::start_sharing(&runner, settings, true).await;
    lines.read_to_the_end().await;
    events.read_to_the_end().await;
    let texts = printed(&lines);
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}\n")).collect();
    assert_eq!(texts, expected, "every line once, in order");
    assert_eq!(lines.end()["status"], "success");
    assert_eq!(events.end()["status"], "success");
    assert_eq!(
        wait_finished(&adopter, &pipeline, 60).await["status"],
        "success"
    );
    drop((adopter, follower, runner));
    let _ = std::fs::remove_dir_all(&dir);
}
