//! Exactly-once starts and graceful hand-over, against a scripted backend on Postgres and
//! SQLite: the start of an attempt is committed before the backend is asked to start it, an
//! adopted attempt is asked about before anything is started, an interrupted one is stopped
//! and run again as the next attempt up to `PICULET_MAX_ATTEMPTS`, and a shutdown lets work
//! finish within its grace and hands the rest over with the steps left running.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use common::{Db, TestApp, find_step, log_text, step_id, wait_finished};
use futures::FutureExt as _;
use piculet::backend::{
    Backend, BackendError, OutputLine, Presence, StepExit, StepHandle, StepRun, WorkflowRun,
};
use piculet::config::DatabaseUrl;
use piculet::engine::{Control, Engine, EngineSettings};
use piculet::metrics_registry::Metrics;
use piculet::model::{LogLine, Status};
use piculet::secrets::SecretBox;
use piculet::store::{Fenced, StartRecord, Store};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

on_both_databases!(
    a_start_is_recorded_once_per_attempt_and_only_by_the_lease_holder,
    an_adopting_replica_asks_before_it_starts_anything,
    a_fresh_start_is_committed_before_the_backend_starts_it,
    an_interrupted_step_of_a_canceled_pipeline_is_stopped_not_run_again,
    shutdown_finishes_within_the_grace_and_hands_the_rest_over,
    a_replica_that_lost_its_lease_cannot_end_a_step_or_its_workflow,
    the_log_limit_holds_across_adoption,
);

/// What the scripted backend was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Start(String, u32),
    Attach(String, u32),
    Stop(String),
}

/// A step's name and the attempt asked for, with the stored status, attempt and launched.
type SeenAtStart = (String, u32, Status, i32, bool);

/// A backend that runs nothing: each step prints one line naming its attempt and exits 0 at
/// once, except steps named `long…`, which run until stopped. Adopted steps are answered from
/// `presence`; attaching to a step named `unattachable` fails.
struct Scripted {
    store: Store,
    calls: Mutex<Vec<Call>>,
    presence: BTreeMap<String, Presence>,
    /// Per running `long…` step: set to stop it.
    stops: Mutex<BTreeMap<Uuid, watch::Sender<bool>>>,
    /// What the store said about each step when the backend was asked to start it.
    seen_at_start: Mutex<Vec<SeenAtStart>>,
}

impl Scripted {
    fn new(store: Store, presence: &[(&str, Presence)]) -> Arc<Scripted> {
        Arc::new(Scripted {
            store,
            calls: Mutex::new(Vec::new()),
            presence: presence
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect(),
            stops: Mutex::new(BTreeMap::new()),
            seen_at_start: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn name(run: &WorkflowRun, id: Uuid) -> String {
        run.step_ids
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }

    fn handle(&self, step: &StepRun, text: String) -> StepHandle {
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let long = step.spec.name.starts_with("long");
        if long {
            self.stops.lock().unwrap().insert(step.step_id, stop_tx);
        }
        // Steps named `…loud…` print 100 lines of 64 bytes after their first.
        let loud = step.spec.name.contains("loud");
        let exit = async move {
            let _ = tx
                .send(OutputLine {
                    at: Utc::now(),
                    text,
                })
                .await;
            for i in 0..100 * usize::from(loud) {
                let _ = tx
                    .send(OutputLine {
                        at: Utc::now(),
                        text: format!("{i:063}\n"),
                    })
                    .await;
            }
            if long {
                let _ = stop_rx.wait_for(|s| *s).await;
                drop(tx);
                return StepExit::Exited {
                    code: 143,
                    reason: None,
                };
            }
            drop(tx);
            StepExit::Exited {
                code: 0,
                reason: None,
            }
        }
        .boxed();
        StepHandle { output: rx, exit }
    }
}

#[async_trait::async_trait]
impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn setup_workflow(&self, _: &WorkflowRun) -> Result<(), BackendError> {
        Ok(())
    }

    async fn start_step(
        &self,
        _: &WorkflowRun,
        step: &StepRun,
    ) -> Result<StepHandle, BackendError> {
        let name = step.spec.name.clone();
        let row = self
            .store
            .step(step.step_id)
            .await
            .map_err(|e| BackendError::Failed(e.to_string()))?
            .expect("the step exists");
        self.seen_at_start.lock().unwrap().push((
            name.clone(),
            step.attempt,
            row.status.0,
            row.attempt,
            row.launched,
        ));
        self.calls
            .lock()
            .unwrap()
            .push(Call::Start(name.clone(), step.attempt));
        Ok(self.handle(step, format!("{name} attempt {}\n", step.attempt)))
    }

    async fn stop_step(
        &self,
        run: &WorkflowRun,
        step_id: Uuid,
        _: Duration,
    ) -> Result<(), BackendError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Stop(Scripted::name(run, step_id)));
        if let Some(stop) = self.stops.lock().unwrap().get(&step_id) {
            let _ = stop.send(true);
        }
        Ok(())
    }

    async fn teardown_workflow(&self, _: &WorkflowRun) -> Result<(), BackendError> {
        Ok(())
    }

    async fn running_steps(&self, _: &WorkflowRun) -> Result<Vec<Uuid>, BackendError> {
        Ok(Vec::new())
    }

    async fn probe_step(
        &self,
        run: &WorkflowRun,
        step_id: Uuid,
        _attempt: u32,
    ) -> Result<Presence, BackendError> {
        Ok(self
            .presence
            .get(&Scripted::name(run, step_id))
            .cloned()
            .unwrap_or(Presence::Absent))
    }

    async fn attach_step(
        &self,
        _: &WorkflowRun,
        step: &StepRun,
        _after: Option<DateTime<Utc>>,
    ) -> Result<StepHandle, BackendError> {
        let name = step.spec.name.clone();
        self.calls
            .lock()
            .unwrap()
            .push(Call::Attach(name.clone(), step.attempt));
        if name == "unattachable" {
            return Err(BackendError::Refused("its output is gone".into()));
        }
        Ok(self.handle(
            step,
            format!("{name} attached to attempt {}\n", step.attempt),
        ))
    }
}

fn database_url(app: &TestApp) -> DatabaseUrl {
    match app.db {
        Db::Postgres => DatabaseUrl::Postgres(app.database_url.clone()),
        Db::Sqlite => DatabaseUrl::Sqlite(app.database_url.clone()),
    }
}

async fn store_of(app: &TestApp) -> Store {
    Store::connect(&database_url(app)).await.unwrap()
}

/// An engine on the scripted backend, as a replica named by its own lease owner.
fn engine(
    app: &TestApp,
    store: &Store,
    backend: Arc<Scripted>,
    shutdown_grace: Duration,
) -> Engine {
    engine_with_log_limit(app, store, backend, shutdown_grace, 1 << 20)
}

fn engine_with_log_limit(
    app: &TestApp,
    store: &Store,
    backend: Arc<Scripted>,
    shutdown_grace: Duration,
    max_log_bytes: usize,
) -> Engine {
    Engine::new(
        store.clone(),
        backend,
        SecretBox::from_config(None, &app.data_dir).unwrap(),
        EngineSettings {
            max_workflows: 4,
            lease: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(1),
            max_log_bytes,
            poll: Duration::from_millis(50),
            max_attempts: 3,
            shutdown_grace,
        },
        Arc::new(Control::default()),
        Metrics::default(),
    )
}

async fn submit(app: &TestApp, yaml: &str) -> (Uuid, Value) {
    let r = app.submit_yaml(yaml).await;
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    (p["id"].as_str().unwrap().parse().unwrap(), p)
}

fn uuid(p: &Value, name: &str) -> Uuid {
    step_id(p, name).parse().unwrap()
}

async fn a_start_is_recorded_once_per_attempt_and_only_by_the_lease_holder(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;
    let (pid, p) = submit(
        &app,
        "steps:\n  - name: only\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    let sid = uuid(&p, "only");
    assert_eq!(
        find_step(&p, "only").unwrap()["attempt"],
        0,
        "not started yet"
    );
    let lease = Duration::from_secs(30);
    let claimed = store.claim_workflow("a", lease).await.unwrap().unwrap();
    assert!(!claimed.takeover);
    assert_eq!(
        (claimed.steps[0].attempt, claimed.steps[0].launched),
        (0, false)
    );

    // Postgres keeps microseconds.
    let now = Utc::now().trunc_subsecs(3);
    assert_eq!(
        store
            .step_started(pid, sid, "b", 1, None, now)
            .await
            .unwrap(),
        StartRecord::Refused,
        "only the lease holder starts a step"
    );
    assert_eq!(
        store
            .step_started(pid, sid, "a", 2, None, now)
            .await
            .unwrap(),
        StartRecord::Refused,
        "attempts follow each other"
    );
    for _ in 0..2 {
        assert_eq!(
            store
                .step_started(pid, sid, "a", 1, None, now)
                .await
                .unwrap(),
            StartRecord::Recorded,
            "a retried start finds its own"
        );
    }
    let row = store.step(sid).await.unwrap().unwrap();
    assert_eq!(
        (row.status.0, row.attempt, row.launched),
        (Status::Running, 1, false)
    );
    store.step_launched(sid, 1).await.unwrap();
    assert!(store.step(sid).await.unwrap().unwrap().launched);

    // Another replica takes the workflow over: the first can no longer start anything.
    store.release_lease(claimed.workflow_id, "a").await.unwrap();
    let taken = store.claim_workflow("b", lease).await.unwrap().unwrap();
    assert!(taken.takeover);
    assert_eq!((taken.steps[0].attempt, taken.steps[0].launched), (1, true));
    let why = "attempt 1 interrupted: gone; running it again as attempt 2";
    assert_eq!(
        store
            .step_started(pid, sid, "a", 2, Some(why.into()), now)
            .await
            .unwrap(),
        StartRecord::Refused
    );
    assert_eq!(
        store
            .step_started(pid, sid, "b", 2, Some(why.into()), now)
            .await
            .unwrap(),
        StartRecord::Recorded
    );
    let row = store.step(sid).await.unwrap().unwrap();
    assert_eq!(
        (row.status.0, row.attempt, row.launched),
        (Status::Running, 2, false)
    );
    assert_eq!(
        row.started_at,
        Some(now),
        "the step started with its first attempt"
    );
    let api = app.pipeline(&pid.to_string()).await;
    assert_eq!(find_step(&api, "only").unwrap()["attempt"], 2, "{api:#}");

    // One running event per attempt, the second saying why.
    let starts: Vec<_> = store
        .events(pid, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.id == sid && e.status == Status::Running)
        .map(|e| e.reason)
        .collect();
    assert_eq!(starts, vec![None, Some(why.to_string())]);

    // A lease left by a claim whose answer was lost is given up; the ones in use are kept.
    let kept: std::collections::HashSet<Uuid> = [taken.workflow_id].into();
    assert_eq!(store.release_stray_claims("b", &kept).await.unwrap(), 0);
    assert_eq!(
        store
            .release_stray_claims("b", &Default::default())
            .await
            .unwrap(),
        1
    );
    let again = store.claim_workflow("c", lease).await.unwrap().unwrap();
    assert_eq!(again.workflow_id, taken.workflow_id, "claimable at once");
    store.close().await;
}

async fn an_adopting_replica_asks_before_it_starts_anything(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;
    let names = [
        "present",
        "unborn",
        "gone",
        "broken",
        "unattachable",
        "exhausted",
        "queued",
    ];
    let yaml: String = std::iter::once("steps:\n".to_string())
        .chain(names.iter().map(|n| {
            format!("  - name: {n}\n    image: alpine\n    depends_on: []\n    commands: [true]\n")
        }))
        .collect();
    let (pid, p) = submit(&app, &yaml).await;
    // A replica that died: it recorded these starts and nothing more.
    let dead = store
        .claim_workflow("dead", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let now = Utc::now();
    for (name, attempts, launched) in [
        ("present", 1, true),
        ("unborn", 1, false),
        ("gone", 1, true),
        ("broken", 1, true),
        ("unattachable", 1, true),
        ("exhausted", 3, true),
    ] {
        let sid = uuid(&p, name);
        for attempt in 1..=attempts {
            assert_eq!(
                store
                    .step_started(pid, sid, "dead", attempt, None, now)
                    .await
                    .unwrap(),
                StartRecord::Recorded
            );
        }
        if launched {
            store.step_launched(sid, attempts).await.unwrap();
        }
    }
    store.release_lease(dead.workflow_id, "dead").await.unwrap();

    let backend = Scripted::new(
        store.clone(),
        &[
            ("present", Presence::Present),
            ("unborn", Presence::Absent),
            ("gone", Presence::Absent),
            (
                "broken",
                Presence::Interrupted {
                    reason: "its process died with no exit recorded".into(),
                },
            ),
            ("unattachable", Presence::Present),
            ("exhausted", Presence::Absent),
        ],
    );
    let shutdown = CancellationToken::new();
    let running =
        tokio::spawn(engine(&app, &store, backend.clone(), Duration::ZERO).run(shutdown.clone()));
    let done = wait_finished(&app, &pid.to_string(), 60).await;
    shutdown.cancel();
    running.await.unwrap();

    let calls = backend.calls();
    let of = |name: &str| -> Vec<Call> {
        calls
            .iter()
            .filter(|c| match c {
                Call::Start(n, _) | Call::Attach(n, _) | Call::Stop(n) => n == name,
            })
            .cloned()
            .collect()
    };
    let start = |n: &str, a| Call::Start(n.into(), a);
    assert_eq!(of("present"), vec![Call::Attach("present".into(), 1)]);
    assert_eq!(
        of("unborn"),
        vec![start("unborn", 1)],
        "never launched: the same attempt"
    );
    assert_eq!(
        of("gone"),
        vec![Call::Stop("gone".into()), start("gone", 2)]
    );
    assert_eq!(
        of("broken"),
        vec![Call::Stop("broken".into()), start("broken", 2)]
    );
    assert_eq!(
        of("unattachable"),
        vec![
            Call::Attach("unattachable".into(), 1),
            Call::Stop("unattachable".into()),
            start("unattachable", 2)
        ]
    );
    assert_eq!(of("exhausted"), vec![Call::Stop("exhausted".into())]);
    assert_eq!(of("queued"), vec![start("queued", 1)]);

    let step = |n: &str| find_step(&done, n).unwrap();
    for (name, attempt) in [
        ("present", 1),
        ("unborn", 1),
        ("gone", 2),
        ("broken", 2),
        ("unattachable", 2),
        ("queued", 1),
    ] {
        assert_eq!(step(name)["status"], "success", "{name}: {done:#}");
        assert_eq!(step(name)["attempt"], attempt, "{name}: {done:#}");
    }
    let exhausted = step("exhausted");
    assert_eq!(exhausted["status"], "error");
    assert_eq!(exhausted["attempt"], 3);
    let reason = exhausted["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("attempt 3 interrupted: piculet stopped while it ran")
            && reason.contains("PICULET_MAX_ATTEMPTS"),
        "{reason}"
    );

    // The log says why the lines start over, then the new attempt's own.
    let broken = log_text(&app, &step_id(&done, "broken")).await;
    assert_eq!(
        broken,
        "piculet: attempt 1 interrupted: its process died with no exit recorded; running it \
         again as attempt 2\nbroken attempt 2\n"
    );
    assert_eq!(
        log_text(&app, &step_id(&done, "present")).await,
        "present attached to attempt 1\n"
    );
    store.close().await;
}

async fn an_interrupted_step_of_a_canceled_pipeline_is_stopped_not_run_again(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;
    let (pid, p) = submit(
        &app,
        "steps:\n  - name: gone\n    image: alpine\n    commands: [true]\n  - name: next\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    let sid = uuid(&p, "gone");
    let dead = store
        .claim_workflow("dead", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let recorded = store
        .step_started(pid, sid, "dead", 1, None, Utc::now())
        .await
        .unwrap();
    assert_eq!(recorded, StartRecord::Recorded);
    store.step_launched(sid, 1).await.unwrap();
    // Canceled while no replica ran it: the request is only a flag on a running workflow.
    let r = app
        .post(&format!("/api/v1/pipelines/{pid}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    store.release_lease(dead.workflow_id, "dead").await.unwrap();

    let backend = Scripted::new(store.clone(), &[("gone", Presence::Absent)]);
    let shutdown = CancellationToken::new();
    let running =
        tokio::spawn(engine(&app, &store, backend.clone(), Duration::ZERO).run(shutdown.clone()));
    let done = wait_finished(&app, &pid.to_string(), 60).await;
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(done["status"], "canceled", "{done:#}");
    assert_eq!(backend.calls(), vec![Call::Stop("gone".into())]);
    let gone = find_step(&done, "gone").unwrap();
    assert_eq!(
        (gone["status"].as_str(), gone["attempt"].as_u64()),
        (Some("canceled"), Some(1))
    );
    assert_eq!(find_step(&done, "next").unwrap()["status"], "canceled");
    store.close().await;
}

async fn a_fresh_start_is_committed_before_the_backend_starts_it(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;
    let (pid, _) = submit(
        &app,
        "steps:\n  - name: one\n    image: alpine\n    commands: [true]\n  - name: two\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    let backend = Scripted::new(store.clone(), &[]);
    let shutdown = CancellationToken::new();
    let running =
        tokio::spawn(engine(&app, &store, backend.clone(), Duration::ZERO).run(shutdown.clone()));
    let done = wait_finished(&app, &pid.to_string(), 60).await;
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    let seen = backend.seen_at_start.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("one".to_string(), 1, Status::Running, 1, false),
            ("two".to_string(), 1, Status::Running, 1, false),
        ],
        "running at that attempt and not yet launched, whenever the backend is asked"
    );
    for name in ["one", "two"] {
        let row = store.step(uuid(&done, name)).await.unwrap().unwrap();
        assert!(row.launched, "{name}: recorded as launched once started");
        assert_eq!(row.attempt, 1);
    }
    store.close().await;
}

async fn shutdown_finishes_within_the_grace_and_hands_the_rest_over(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;

    // Within the grace: a short step ends here, recorded as usual.
    let (short, _) = submit(
        &app,
        "steps:\n  - name: short\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    let backend = Scripted::new(store.clone(), &[]);
    let shutdown = CancellationToken::new();
    let first = engine(&app, &store, backend.clone(), Duration::from_secs(3600));
    let hand_over = first.hand_over();
    let running = tokio::spawn(first.run(shutdown.clone()));
    let done = wait_finished(&app, &short.to_string(), 60).await;
    assert_eq!(done["status"], "success");

    // A long step is running when the shutdown begins: nothing new is claimed, the step goes
    // on through the grace, and a second signal hands it over with the step left running.
    let (long, p) = submit(
        &app,
        "steps:\n  - name: long\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    let sid = uuid(&p, "long");
    common::wait_step(&app, &long.to_string(), "long", "running", 60).await;
    shutdown.cancel();
    let (queued, _) = submit(
        &app,
        "steps:\n  - name: later\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    // While the workflow goes on within the grace, the queued one stays queued.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.pipeline(&queued.to_string()).await["status"], "queued");
    assert!(
        !running.is_finished(),
        "the running workflow holds the engine in its grace"
    );
    hand_over.cancel();
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the hand-over ends the engine")
        .unwrap();
    assert!(
        !backend.calls().contains(&Call::Stop("long".into())),
        "the step was left running: {:?}",
        backend.calls()
    );
    let row = store.step(sid).await.unwrap().unwrap();
    assert_eq!(
        (row.status.0, row.attempt, row.launched),
        (Status::Running, 1, true)
    );
    assert_eq!(log_text(&app, &sid.to_string()).await, "long attempt 1\n");

    // The lease was given up: the next replica takes the workflow over at once and adopts
    // the step (the scripted backend says it is there) instead of starting it again.
    let next = Scripted::new(store.clone(), &[("long", Presence::Present)]);
    let shutdown = CancellationToken::new();
    let second =
        tokio::spawn(engine(&app, &store, next.clone(), Duration::ZERO).run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !next.calls().contains(&Call::Attach("long".into(), 1)) {
        assert!(std::time::Instant::now() < deadline, "{:?}", next.calls());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ended (here, by a cancel): the step of the first replica never ran again.
    let r = app
        .post(&format!("/api/v1/pipelines/{long}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let done = wait_finished(&app, &long.to_string(), 60).await;
    assert_eq!(done["status"], "canceled", "{done:#}");
    assert!(
        !next
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Start(n, _) if n == "long")),
        "{:?}",
        next.calls()
    );
    wait_finished(&app, &queued.to_string(), 60).await;
    shutdown.cancel();
    second.await.unwrap();
    store.close().await;
}

/// A replica whose lease ran out (stalled past `PICULET_LEASE`, or a clock ahead on the
/// claimer's side) may still be inside a step it follows. The step's end, or its workflow's,
/// that it then records must not land: the adopting replica may have stopped the attempt to
/// run it again, and the stalled replica's "killed by signal 15" would be the step's outcome.
async fn a_replica_that_lost_its_lease_cannot_end_a_step_or_its_workflow(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;
    let (pid, p) = submit(
        &app,
        "steps:\n  - name: only\n    image: alpine\n    commands: [true]\n",
    )
    .await;
    let sid = uuid(&p, "only");
    let lease = Duration::from_secs(30);
    let claimed = store.claim_workflow("a", lease).await.unwrap().unwrap();
    let now = Utc::now().trunc_subsecs(3);
    assert_eq!(
        store
            .step_started(pid, sid, "a", 1, None, now)
            .await
            .unwrap(),
        StartRecord::Recorded
    );
    store.step_launched(sid, 1).await.unwrap();
    let line = |number: i64, text: &str| LogLine {
        number,
        at: Utc::now().trunc_subsecs(6),
        text: format!("{text}\n"),
    };
    assert_eq!(
        store
            .insert_log_lines(sid, "a", vec![line(1, "from a")].into())
            .await
            .unwrap(),
        Fenced::Stored
    );
    // "b" takes the workflow over (released here; a lease running out is the same to "b").
    store.release_lease(claimed.workflow_id, "a").await.unwrap();
    let taken = store.claim_workflow("b", lease).await.unwrap().unwrap();
    assert!(taken.takeover);

    // A batch "a" had in flight lands after the takeover: refused, so the lines "b" numbers
    // from the last one stored cannot collide with it.
    assert_eq!(
        store
            .insert_log_lines(sid, "a", vec![line(2, "late from a")].into())
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    let last = store.last_log_line(sid).await.unwrap().unwrap();
    assert_eq!((last.number, last.text.as_str()), (1, "from a\n"));
    assert_eq!(
        store
            .insert_log_lines(sid, "b", vec![line(2, "from b")].into())
            .await
            .unwrap(),
        Fenced::Stored
    );

    // "a" saw its step killed (by "b", stopping what it cannot trust) and records that.
    store
        .step_finished(
            pid,
            sid,
            "a",
            Status::Failure,
            Some(143),
            Some("exit code 143 (killed by signal 15)".into()),
            Utc::now(),
        )
        .await
        .unwrap();
    store
        .workflow_finished(
            pid,
            claimed.workflow_id,
            "a",
            Status::Failure,
            Some("step only failed".into()),
        )
        .await
        .unwrap();
    let row = store.step(sid).await.unwrap().unwrap();
    assert_eq!(
        (row.status.0, row.attempt),
        (Status::Running, 1),
        "the end recorded by a replica without the lease landed"
    );
    let api = app.pipeline(&pid.to_string()).await;
    assert_eq!(api["status"], "running", "{api:#}");

    // The lease holder goes on: the next attempt, then the step's and the workflow's ends.
    let why = "attempt 1 interrupted: gone; running it again as attempt 2";
    assert_eq!(
        store
            .step_started(pid, sid, "b", 2, Some(why.into()), now)
            .await
            .unwrap(),
        StartRecord::Recorded
    );
    store
        .step_finished(pid, sid, "b", Status::Success, Some(0), None, Utc::now())
        .await
        .unwrap();
    store
        .workflow_finished(pid, taken.workflow_id, "b", Status::Success, None)
        .await
        .unwrap();
    let done = app.pipeline(&pid.to_string()).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(find_step(&done, "only").unwrap()["status"], "success");
    assert_eq!(find_step(&done, "only").unwrap()["attempt"], 2);
    store.close().await;
}

/// `PICULET_MAX_LOG_SIZE` is a step's, not a replica's: a replica that adopts a step whose
/// log already reached the limit (or runs it again as a new attempt) stores nothing more of
/// its output, and one that adopts a step below the limit stores only what is left of it.
async fn the_log_limit_holds_across_adoption(db: Db) {
    const LIMIT: usize = 4096;
    let notice = format!(
        "piculet: the log reached its limit of {LIMIT} bytes (PICULET_MAX_LOG_SIZE); further output of this step is discarded\n"
    );
    let app = TestApp::spawn_api(db).await;
    let store = store_of(&app).await;
    let (pid, p) = submit(
        &app,
        "steps:\n  - name: loud-full\n    image: alpine\n    commands: [true]\n  \
         - name: loud-half\n    image: alpine\n    commands: [true]\n    depends_on: []\n  \
         - name: loud-gone\n    image: alpine\n    commands: [true]\n    depends_on: []\n",
    )
    .await;
    // A replica that died: it had stored up to the limit and the notice of two of the
    // steps, and half the limit of the third.
    let dead = store
        .claim_workflow("dead", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let line = |number: i64, text: String| piculet::model::LogLine {
        number,
        at: Utc::now().trunc_subsecs(6),
        text,
    };
    for (name, lines, truncated) in [
        ("loud-full", LIMIT / 64, true),
        ("loud-half", LIMIT / 128, false),
        ("loud-gone", LIMIT / 64, true),
    ] {
        let sid = uuid(&p, name);
        store
            .step_started(pid, sid, "dead", 1, None, Utc::now())
            .await
            .unwrap();
        store.step_launched(sid, 1).await.unwrap();
        let mut stored: Vec<_> = (1..=lines as i64)
            .map(|n| line(n, format!("{n:063}\n")))
            .collect();
        if truncated {
            stored.push(line(lines as i64 + 1, notice.clone()));
        }
        store
            .insert_log_lines(sid, "dead", stored.into())
            .await
            .unwrap();
    }
    store.release_lease(dead.workflow_id, "dead").await.unwrap();

    // The adopting replica re-attaches to two of them, and runs the third again.
    let backend = Scripted::new(
        store.clone(),
        &[
            ("loud-full", Presence::Present),
            ("loud-half", Presence::Present),
            (
                "loud-gone",
                Presence::Interrupted {
                    reason: "gone".into(),
                },
            ),
        ],
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        engine_with_log_limit(&app, &store, backend.clone(), Duration::ZERO, LIMIT)
            .run(shutdown.clone()),
    );
    let done = wait_finished(&app, &pid.to_string(), 60).await;
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(done["status"], "success", "{done:#}");

    for name in ["loud-full", "loud-half", "loud-gone"] {
        let log = log_text(&app, &step_id(&p, name)).await;
        let own: usize = log
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("piculet:"))
            .map(str::len)
            .sum();
        assert!(
            own <= LIMIT,
            "{name}: {own} bytes of output stored, the limit is {LIMIT}"
        );
        assert_eq!(
            log.matches(&notice).count(),
            1,
            "{name}: one notice of the limit\n{log}"
        );
        // After it, only piculet's own lines (why the step runs again).
        let (_, after) = log.split_once(&notice).unwrap();
        assert!(
            after
                .split_inclusive('\n')
                .all(|l| l.starts_with("piculet:")),
            "{name}: the step's output after the notice\n{log}"
        );
    }
    store.close().await;
}
