//! Workflow concurrency (`concurrency: N` or `{limit, group}`), on Postgres and SQLite.
//!
//! The claim itself is raced directly through the store: several claimers at once, on
//! Postgres from two stores with pools of their own (two replicas), each claiming in the same
//! instant. Then whole servers: two replicas on Postgres (one on SQLite) running pipelines of
//! one group, where the steps' own start and end times show that no two ever overlapped.
//! `tests/it/chaos.rs` kills the replica that holds a group's place.

use crate::common;

use std::time::{Duration, Instant};

use common::{Db, TestApp, wait_finished};
use piculet::config::{DatabaseUrl, Settings};
use piculet::model::{Status, Subject};
use piculet::store::{ClaimedWorkflow, PoolSettings, Store, Timeouts};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

on_both_databases!(
    claims_in_one_group_take_turns_in_creation_order,
    a_waiting_workflow_says_so_once_and_the_metrics_count_it,
    depends_on_inside_a_group_does_not_deadlock,
    an_earlier_pipelines_workflow_keeps_its_place_while_it_waits_for_its_dependencies,
    a_waiting_workflow_is_canceled_and_frees_no_place,
    an_expired_lease_keeps_its_place_until_its_workflow_ends,
    replicas_run_one_deploy_at_a_time_and_leave_other_groups_alone,
    a_group_or_repository_too_long_to_index_is_refused_at_its_place,
    a_waiting_reason_keeps_its_numbers_true_once_the_group_has_a_place,
);

const LEASE: Duration = Duration::from_secs(30);

/// A workflow file: one quick step, and `concurrency` as given (YAML flow text).
fn config(concurrency: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(c) = concurrency {
        text.push_str(&format!("concurrency: {c}\n"));
    }
    text.push_str("steps: [{name: s, image: alpine, commands: [\"true\"]}]\n");
    text
}

/// Submits configs `(name, content)` for repository `repo` (its `CI_REPO`, when given).
async fn submit(app: &TestApp, repo: Option<&str>, configs: &[(&str, String)]) -> Value {
    let configs: Vec<Value> = configs
        .iter()
        .map(|(name, content)| json!({"name": name, "content": content}))
        .collect();
    let mut body = json!({ "configs": configs });
    if let Some(repo) = repo {
        body["variables"] = json!({ "CI_REPO": repo });
    }
    let response = app.submit_json(&body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

fn id(p: &Value) -> Uuid {
    p["id"].as_str().unwrap().parse().unwrap()
}

/// The id of the pipeline's workflow of that name.
fn workflow(p: &Value, name: &str) -> Uuid {
    p["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workflow {name}: {p:#}"))["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The workflow as the API shows it.
async fn workflow_json(app: &TestApp, p: &Value, name: &str) -> Value {
    let wanted = workflow(p, name).to_string();
    let now = app.pipeline(p["id"].as_str().unwrap()).await;
    now["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == wanted.as_str())
        .unwrap()
        .clone()
}

/// Stores standing for replicas: on Postgres two, each with a pool of its own; on SQLite one
/// (SQLite serves one replica), with several connections all the same.
async fn replicas(app: &TestApp) -> Vec<Store> {
    let (url, count) = match app.db {
        Db::Postgres => (DatabaseUrl::Postgres(app.database_url.clone()), 2),
        Db::Sqlite => (DatabaseUrl::Sqlite(app.database_url.clone()), 1),
    };
    let settings = PoolSettings {
        connections: 4,
        timeouts: Timeouts::default(),
    };
    let mut stores = Vec::new();
    for _ in 0..count {
        stores.push(Store::connect_with(&url, settings).await.unwrap());
    }
    stores
}

/// Claimers of every replica, six in all, claim at the same instant; what each took, with its
/// owner.
async fn claim_round(stores: &[Store]) -> Vec<(String, ClaimedWorkflow)> {
    let per_replica = 6 / stores.len();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(stores.len() * per_replica));
    let mut claims = JoinSet::new();
    for (r, store) in stores.iter().enumerate() {
        for t in 0..per_replica {
            let (store, start) = (store.clone(), start.clone());
            let owner = format!("replica-{r}/worker-{t}");
            claims.spawn(async move {
                start.wait().await;
                let claimed = store.claim_workflow(&owner, LEASE).await.unwrap();
                claimed.map(|c| (owner, c))
            });
        }
    }
    let mut taken = Vec::new();
    while let Some(claim) = claims.join_next().await {
        taken.extend(claim.unwrap());
    }
    taken
}

fn ids(taken: &[(String, ClaimedWorkflow)]) -> std::collections::BTreeSet<Uuid> {
    taken.iter().map(|(_, c)| c.workflow_id).collect()
}

async fn finish(store: &Store, (owner, c): &(String, ClaimedWorkflow)) {
    store
        .workflow_finished(c.pipeline_id, c.workflow_id, owner, Status::Success, None)
        .await
        .unwrap();
}

async fn claims_in_one_group_take_turns_in_creation_order(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let stores = replicas(&app).await;
    let mut deploys = Vec::new();
    for _ in 0..5 {
        let p = submit(&app, Some("acme/api"), &[("deploy", config(Some("1")))]).await;
        deploys.push(workflow(&p, "deploy"));
    }
    // Created later, none of these waits for acme/api's deploys: another repository's group
    // of the same name, another group of the same repository, no group at all.
    let web = submit(&app, Some("acme/web"), &[("deploy", config(Some("1")))]).await;
    let lint = submit(
        &app,
        Some("acme/api"),
        &[("lint", config(Some("{limit: 1, group: checks}")))],
    )
    .await;
    let free = submit(&app, Some("acme/api"), &[("test", config(None))]).await;

    let mut running = claim_round(&stores).await;
    assert_eq!(
        ids(&running),
        [
            deploys[0],
            workflow(&web, "deploy"),
            workflow(&lint, "lint"),
            workflow(&free, "test"),
        ]
        .into_iter()
        .collect(),
        "one deploy of acme/api, and every workflow of another group or of none"
    );
    assert!(
        claim_round(&stores).await.is_empty(),
        "the group is full: nothing more"
    );
    // Each end lets exactly the next deploy run, in the order the pipelines were created.
    for next in &deploys[1..] {
        let done = running
            .iter()
            .position(|(_, c)| deploys.contains(&c.workflow_id))
            .unwrap();
        finish(&stores[0], &running.remove(done)).await;
        let taken = claim_round(&stores).await;
        assert_eq!(ids(&taken), [*next].into_iter().collect());
        running.extend(taken);
    }
}

async fn a_waiting_workflow_says_so_once_and_the_metrics_count_it(db: Db) {
    let settings = Settings {
        metrics_concurrency_groups: Some("1".into()),
        ..Settings::default()
    };
    let app = TestApp::spawn_api_with(db, settings).await;
    let store = replicas(&app).await.remove(0);
    let mut ps = Vec::new();
    for _ in 0..3 {
        ps.push(submit(&app, Some("acme/api"), &[("deploy", config(Some("1")))]).await);
    }
    submit(&app, Some("acme/web"), &[("deploy", config(Some("1")))]).await;
    let first = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert_eq!(first.workflow_id, workflow(&ps[0], "deploy"));
    let web = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert!(store.claim_workflow("a", LEASE).await.unwrap().is_none());

    assert_eq!(store.note_waiting().await.unwrap(), 2, "two start waiting");
    assert_eq!(store.note_waiting().await.unwrap(), 0, "said once");
    let second = workflow_json(&app, &ps[1], "deploy").await;
    assert_eq!(second["status"], "queued");
    assert_eq!(
        second["reason"],
        "waiting for concurrency group deploy: 1 of 1 running"
    );
    assert_eq!(
        workflow_json(&app, &ps[2], "deploy").await["reason"],
        "waiting for concurrency group deploy: 1 of 1 running, 1 queued ahead"
    );
    let waiting_events = |events: Vec<piculet::model::Event>| -> Vec<Option<String>> {
        events
            .into_iter()
            .filter(|e| e.subject == Subject::Workflow && e.status == Status::Queued)
            .map(|e| e.reason)
            .collect()
    };
    assert_eq!(
        waiting_events(store.events(id(&ps[1]), 0, 100).await.unwrap()),
        [Some(
            "waiting for concurrency group deploy: 1 of 1 running".to_string()
        )]
    );

    // The group with the most workflows has series of its own; the rest are summed.
    let metrics = app.text("/api/v1/metrics").await;
    for line in [
        "piculet_concurrency_running{repo=\"acme/api\",group=\"deploy\"} 1",
        "piculet_concurrency_waiting{repo=\"acme/api\",group=\"deploy\"} 2",
        "piculet_concurrency_running{repo=\"(other)\",group=\"(other)\"} 1",
        "piculet_concurrency_waiting{repo=\"(other)\",group=\"(other)\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(!metrics.contains("acme/web"), "{metrics}");

    // The first ends: the second runs and no longer says it waits; the third's reason is
    // brought up to date, without another event.
    finish(&store, &("a".to_string(), first)).await;
    finish(&store, &("a".to_string(), web)).await;
    let second = store.claim_workflow("b", LEASE).await.unwrap().unwrap();
    assert_eq!(second.workflow_id, workflow(&ps[1], "deploy"));
    assert_eq!(
        workflow_json(&app, &ps[1], "deploy").await["reason"],
        Value::Null
    );
    assert_eq!(store.note_waiting().await.unwrap(), 0);
    assert_eq!(
        workflow_json(&app, &ps[2], "deploy").await["reason"],
        "waiting for concurrency group deploy: 1 of 1 running"
    );
    assert_eq!(
        waiting_events(store.events(id(&ps[2]), 0, 100).await.unwrap()).len(),
        1
    );
    let metrics = app.text("/api/v1/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "piculet_concurrency_waiting{repo=\"acme/api\",group=\"deploy\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("(other)"), "nothing left out: {metrics}");
}

async fn depends_on_inside_a_group_does_not_deadlock(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let stores = replicas(&app).await;
    // Both workflows of each pipeline share the group; the deploy, first in the pipeline,
    // needs the build.
    let pipeline = [
        (
            "deploy",
            format!(
                "depends_on: [build]\n{}",
                config(Some("{limit: 1, group: release}"))
            ),
        ),
        ("build", config(Some("{limit: 1, group: release}"))),
    ];
    let p1 = submit(&app, None, &pipeline).await;
    let p2 = submit(&app, None, &pipeline).await;
    // One pipeline's ready workflows run in their order: build before test.
    let p3 = submit(
        &app,
        None,
        &[
            ("build", config(Some("{limit: 1, group: other}"))),
            ("test", config(Some("{limit: 1, group: other}"))),
        ],
    )
    .await;

    // p1's deploy, not ready, holds no place against p1's own build (it waits for it); p2's
    // build may not pass p1's deploy, ready or not.
    let mut order = Vec::new();
    let mut running = claim_round(&stores).await;
    assert_eq!(
        ids(&running),
        [workflow(&p1, "build"), workflow(&p3, "build")]
            .into_iter()
            .collect()
    );
    // Round by round, what runs ends and the claimers take what that lets run.
    while !running.is_empty() {
        for r in &running {
            order.push(r.1.workflow_id);
            finish(&stores[0], r).await;
        }
        running = claim_round(&stores).await;
    }
    let release: Vec<Uuid> = order
        .iter()
        .copied()
        .filter(|w| ![workflow(&p3, "build"), workflow(&p3, "test")].contains(w))
        .collect();
    assert_eq!(
        release,
        [
            workflow(&p1, "build"),
            workflow(&p1, "deploy"),
            workflow(&p2, "build"),
            workflow(&p2, "deploy"),
        ]
    );
    let other: Vec<Uuid> = order
        .iter()
        .copied()
        .filter(|w| [workflow(&p3, "build"), workflow(&p3, "test")].contains(w))
        .collect();
    assert_eq!(other, [workflow(&p3, "build"), workflow(&p3, "test")]);
}

async fn an_earlier_pipelines_workflow_keeps_its_place_while_it_waits_for_its_dependencies(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let stores = replicas(&app).await;
    let p1 = submit(
        &app,
        None,
        &[
            (
                "deploy",
                format!("depends_on: [test]\n{}", config(Some("1"))),
            ),
            ("test", config(None)),
        ],
    )
    .await;
    let p2 = submit(&app, None, &[("deploy", config(Some("1")))]).await;
    // The group is empty, but p1's deploy (not ready: its test runs) is ahead of p2's.
    let test = claim_round(&stores).await;
    assert_eq!(ids(&test), [workflow(&p1, "test")].into_iter().collect());
    stores[0].note_waiting().await.unwrap();
    assert_eq!(
        workflow_json(&app, &p2, "deploy").await["reason"],
        "waiting for concurrency group deploy: 0 of 1 running, 1 queued ahead"
    );
    assert_eq!(
        workflow_json(&app, &p1, "deploy").await["reason"],
        Value::Null,
        "waiting for its dependency, not for its group"
    );
    finish(&stores[0], &test[0]).await;
    let first = claim_round(&stores).await;
    assert_eq!(ids(&first), [workflow(&p1, "deploy")].into_iter().collect());
    finish(&stores[0], &first[0]).await;
    let second = claim_round(&stores).await;
    assert_eq!(
        ids(&second),
        [workflow(&p2, "deploy")].into_iter().collect()
    );
}

async fn a_waiting_workflow_is_canceled_and_frees_no_place(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = replicas(&app).await.remove(0);
    let p1 = submit(&app, None, &[("deploy", config(Some("1")))]).await;
    let p2 = submit(&app, None, &[("deploy", config(Some("1")))]).await;
    let p3 = submit(&app, None, &[("deploy", config(Some("1")))]).await;
    let first = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert_eq!(first.workflow_id, workflow(&p1, "deploy"));
    assert_eq!(store.note_waiting().await.unwrap(), 2);

    let canceled = app
        .post(&format!("/api/v1/pipelines/{}/cancel", id(&p2)))
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 200);
    let p2_now = wait_finished(&app, p2["id"].as_str().unwrap(), 10).await;
    assert_eq!(p2_now["status"], "canceled", "{p2_now:#}");
    assert_eq!(p2_now["workflows"][0]["status"], "canceled");
    assert_eq!(
        p2_now["workflows"][0]["reason"],
        "canceled before it started"
    );
    // The running one keeps the group: the third still waits, now first in line.
    assert!(store.claim_workflow("a", LEASE).await.unwrap().is_none());
    store.note_waiting().await.unwrap();
    assert_eq!(
        workflow_json(&app, &p3, "deploy").await["reason"],
        "waiting for concurrency group deploy: 1 of 1 running"
    );
    finish(&store, &("a".to_string(), first)).await;
    let third = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert_eq!(third.workflow_id, workflow(&p3, "deploy"));
}

/// The numbers of a waiting reason were brought up to date only while the group held the
/// workflow back: once its place came free, and until a replica claimed it, it kept saying
/// `1 of 1 running` of a group where none ran.
async fn a_waiting_reason_keeps_its_numbers_true_once_the_group_has_a_place(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = replicas(&app).await.remove(0);
    submit(&app, None, &[("deploy", config(Some("1")))]).await;
    let p2 = submit(&app, None, &[("deploy", config(Some("1")))]).await;
    let first = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert_eq!(store.note_waiting().await.unwrap(), 1);
    assert_eq!(
        workflow_json(&app, &p2, "deploy").await["reason"],
        "waiting for concurrency group deploy: 1 of 1 running"
    );
    let events = store.events(id(&p2), 0, 100).await.unwrap().len();

    finish(&store, &("a".to_string(), first)).await;
    assert_eq!(store.note_waiting().await.unwrap(), 0, "no second event");
    assert_eq!(
        workflow_json(&app, &p2, "deploy").await["reason"],
        "waiting for concurrency group deploy: 0 of 1 running"
    );
    assert_eq!(store.events(id(&p2), 0, 100).await.unwrap().len(), events);
    let second = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert_eq!(second.workflow_id, workflow(&p2, "deploy"));
    assert_eq!(
        workflow_json(&app, &p2, "deploy").await["reason"],
        Value::Null
    );
}

/// Text of `bytes` bytes that does not compress: Postgres compresses an index entry before it
/// holds it to its size limit, so a repeated letter would slip through.
fn incompressible(bytes: usize) -> String {
    let mut text = String::new();
    while text.len() < bytes {
        text.push_str(&Uuid::new_v4().simple().to_string());
    }
    text.truncate(bytes);
    text
}

/// A group and a repository at the bound are stored, indexed and claimed; one byte more of
/// either is refused with its place, not left to fail in the database (a Postgres B-tree entry
/// holds at most 2704 bytes, and the claim's index holds both).
async fn a_group_or_repository_too_long_to_index_is_refused_at_its_place(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let store = replicas(&app).await.remove(0);
    let longest = incompressible(1024);
    let p = submit(
        &app,
        Some(&incompressible(1024)),
        &[(
            "deploy",
            config(Some(&format!("{{limit: 1, group: {longest}}}"))),
        )],
    )
    .await;
    let claimed = store.claim_workflow("a", LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.workflow_id, workflow(&p, "deploy"));

    let refusals = [
        (
            None,
            format!("{{limit: 1, group: {}}}", incompressible(3000)),
            "/concurrency/group",
            "a concurrency group of 3000 bytes is more than the limit of 1024 bytes",
        ),
        (
            None,
            "{limit: 1, group: \"${LONG}\"}".to_string(),
            "/concurrency/group",
            "a concurrency group of 3000 bytes is more than the limit of 1024 bytes",
        ),
        (
            Some(incompressible(3000)),
            "1".to_string(),
            "/concurrency",
            "concurrency groups are scoped by the submission's CI_REPO, and its 3000 bytes are more than the limit of 1024 bytes",
        ),
    ];
    for (repo, concurrency, pointer, message) in refusals {
        let mut body = json!({
            "configs": [{"name": "deploy", "content": config(Some(&concurrency))}],
            "variables": {"LONG": incompressible(3000)},
        });
        if let Some(repo) = repo {
            body["variables"]["CI_REPO"] = json!(repo);
        }
        let response = app.submit_json(&body).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 422, "{concurrency}: {answer:#}");
        let errors = answer["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{answer:#}");
        assert_eq!(errors[0]["pointer"], pointer, "{answer:#}");
        assert!(
            errors[0]["message"].as_str().unwrap().starts_with(message),
            "{answer:#}"
        );
    }
}

async fn an_expired_lease_keeps_its_place_until_its_workflow_ends(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let stores = replicas(&app).await;
    let p1 = submit(&app, Some("acme/api"), &[("deploy", config(Some("1")))]).await;
    let p2 = submit(&app, Some("acme/api"), &[("deploy", config(Some("1")))]).await;
    // A replica claims the first deploy and dies: its lease is never renewed.
    let short = Duration::from_millis(500);
    let dead = stores[0]
        .claim_workflow("dead", short)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.workflow_id, workflow(&p1, "deploy"));
    assert!(claim_round(&stores).await.is_empty(), "the lease holds");
    tokio::time::sleep(short * 2).await;

    // Once the lease has expired, the workflow is adopted (by one claimer), and it keeps its
    // place: the second deploy neither runs beside it nor is counted twice against it.
    let adopted = claim_round(&stores).await;
    assert_eq!(ids(&adopted), [dead.workflow_id].into_iter().collect());
    assert!(adopted[0].1.takeover);
    assert!(claim_round(&stores).await.is_empty());
    stores[0].note_waiting().await.unwrap();
    assert_eq!(
        workflow_json(&app, &p2, "deploy").await["reason"],
        "waiting for concurrency group deploy: 1 of 1 running"
    );
    // The adopter ends it: the next one runs.
    finish(&stores[0], &adopted[0]).await;
    let next = claim_round(&stores).await;
    assert_eq!(ids(&next), [workflow(&p2, "deploy")].into_iter().collect());
}

/// The start and end of the step of each workflow, from the API.
fn step_interval(p: &Value) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let step = &p["workflows"][0]["steps"][0];
    let at = |field: &str| {
        step[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} of {step}"))
            .parse()
            .unwrap()
    };
    (at("started_at"), at("finished_at"))
}

async fn replicas_run_one_deploy_at_a_time_and_leave_other_groups_alone(db: Db) {
    let started = Instant::now();
    let a = TestApp::spawn(db).await;
    // SQLite serves one replica; on Postgres a second one shares the database.
    let b = match db {
        Db::Postgres => Some(TestApp::start_sharing(&a, Settings::default(), true).await),
        Db::Sqlite => None,
    };
    let through = |i: usize| match &b {
        Some(b) if i % 2 == 1 => b,
        _ => &a,
    };
    let deploy = "concurrency: {limit: 1, group: deploy}\n\
                  steps: [{name: s, image: alpine, commands: [\"sleep 0.3\"]}]\n";
    let mut deploys = Vec::new();
    for i in 0..6 {
        deploys.push(submit(through(i), Some("acme/api"), &[("deploy", deploy.into())]).await);
    }
    // Submitted after all of them, it runs while they wait.
    let other = submit(
        &a,
        Some("acme/api"),
        &[(
            "docs",
            "concurrency: 1\nsteps: [{name: s, image: alpine, commands: [\"sleep 0.3\"]}]\n".into(),
        )],
    )
    .await;

    let mut finished = Vec::new();
    for p in &deploys {
        let done = wait_finished(&a, p["id"].as_str().unwrap(), 120).await;
        assert_eq!(done["status"], "success", "{done:#}");
        finished.push(done);
    }
    let other = wait_finished(&a, other["id"].as_str().unwrap(), 120).await;
    assert_eq!(other["status"], "success", "{other:#}");

    // Never two at once, and in the order of creation: each starts after the one before
    // it ended.
    let intervals: Vec<_> = finished.iter().map(step_interval).collect();
    for (i, pair) in intervals.windows(2).enumerate() {
        assert!(
            pair[1].0 >= pair[0].1,
            "deploy {} started at {} before deploy {i} ended at {}",
            i + 1,
            pair[1].0,
            pair[0].1
        );
    }
    // The other group did not wait for the deploys.
    let (docs_start, _) = step_interval(&other);
    assert!(
        docs_start < intervals.last().unwrap().0,
        "docs started at {docs_start}, after the last deploy started"
    );
    // The waiting said so, once per workflow that waited.
    let store = replicas(&a).await.remove(0);
    let mut waited = 0;
    for p in &deploys {
        let said: Vec<_> = store
            .events(id(p), 0, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.subject == Subject::Workflow && e.status == Status::Queued)
            .collect();
        assert!(said.len() <= 1, "{said:?}");
        if let Some(e) = said.first() {
            assert!(
                e.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("waiting for concurrency group deploy: ")),
                "{e:?}"
            );
            waited += 1;
        }
    }
    assert!(waited >= 1, "some deploy waited and said so");
    eprintln!(
        "6 deploys of one group on {db:?} with {} replica(s): {:?}",
        1 + usize::from(b.is_some()),
        started.elapsed()
    );
}

/// Postgres: a claim in a group takes the group's lock and counts after it. A transaction
/// that holds the lock (as another replica's claim would) and starts the group's first
/// workflow meanwhile leaves the claim nothing to take in that group: it waited, then counted
/// what the other had committed.
#[tokio::test]
async fn a_claim_waits_for_its_groups_lock_and_counts_after_it() {
    use sqlx::Connection as _;
    let app = TestApp::spawn_api(Db::Postgres).await;
    let store = replicas(&app).await.remove(0);
    let p1 = submit(&app, Some("acme/api"), &[("deploy", config(Some("1")))]).await;
    submit(&app, Some("acme/api"), &[("deploy", config(Some("1")))]).await;

    let mut other = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut held = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('acme/api'), hashtext('deploy'))")
        .execute(&mut *held)
        .await
        .unwrap();
    let claim = tokio::spawn({
        let store = store.clone();
        async move { store.claim_workflow("b", LEASE).await.unwrap() }
    });
    // The claim is seen by Postgres waiting for an advisory lock (only this one is taken
    // here): it waits for the group's, however loaded the machine. The bound only turns a
    // claim that never asks for the lock into a failure that says so.
    let hang = Instant::now() + Duration::from_secs(60);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&mut *held)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !claim.is_finished(),
            "the claim ended without waiting for the group's lock"
        );
        assert!(
            Instant::now() < hang,
            "the claim never waited for the group's lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!claim.is_finished(), "the claim waits for the group's lock");
    sqlx::query(
        "UPDATE workflows SET status = 'running', lease_owner = 'a', \
         lease_expires_at = now() + interval '1 minute' WHERE id = $1",
    )
    .bind(workflow(&p1, "deploy"))
    .execute(&mut *held)
    .await
    .unwrap();
    held.commit().await.unwrap();

    let claimed = claim.await.unwrap();
    assert!(
        claimed.is_none(),
        "the group was full once the lock came free"
    );
}

/// A claim locks the workflow's row, then its pipeline's (to number the workflow's event);
/// marking a waiting workflow locks the pipeline, then the workflow. A claim of the very
/// workflow being marked (its group came free meanwhile, on another replica) deadlocked the
/// two, and Postgres aborted one of them. Here the test's transaction stands for the claim.
#[tokio::test]
async fn marking_a_waiting_workflow_never_deadlocks_with_its_claim() {
    use sqlx::Connection as _;
    let app = TestApp::spawn_api(Db::Postgres).await;
    let store = replicas(&app).await.remove(0);
    submit(&app, None, &[("deploy", config(Some("1")))]).await;
    let p2 = submit(&app, None, &[("deploy", config(Some("1")))]).await;
    store.claim_workflow("a", LEASE).await.unwrap().unwrap();

    let mut other = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut claim = other.begin().await.unwrap();
    sqlx::query("SELECT id FROM workflows WHERE id = $1 FOR UPDATE")
        .bind(workflow(&p2, "deploy"))
        .execute(&mut *claim)
        .await
        .unwrap();
    let marking = tokio::spawn({
        let store = store.clone();
        async move { store.note_waiting().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let numbered = sqlx::query("UPDATE pipelines SET event_count = event_count WHERE id = $1")
        .bind(id(&p2))
        .execute(&mut *claim)
        .await;
    claim.commit().await.unwrap();
    let marked = marking.await.unwrap();
    assert!(numbered.is_ok(), "the claim: {numbered:?}");
    assert!(marked.is_ok(), "the marking: {marked:?}");
}

/// Leases are measured by the database's clock: a replica on a host whose clock is ten
/// minutes ahead does not take over a lease another replica holds (it would have taken
/// every workflow as soon as it looked), and one whose clock is ten minutes behind holds its
/// leases as long as any other. Postgres only: SQLite serves one replica, one clock.
#[tokio::test]
async fn leases_hold_whatever_the_replicas_clocks_say() {
    let app = TestApp::spawn_api(Db::Postgres).await;
    let stores = replicas(&app).await;
    let ahead = stores[0]
        .clone()
        .with_clock_offset(chrono::Duration::minutes(10));
    let behind = stores[1]
        .clone()
        .with_clock_offset(chrono::Duration::minutes(-10));
    submit(&app, None, &[("one", config(None))]).await;
    submit(&app, None, &[("two", config(None))]).await;

    let held = behind
        .claim_workflow("behind", LEASE)
        .await
        .unwrap()
        .unwrap();
    let renewed = behind
        .renew_lease(held.workflow_id, "behind", LEASE)
        .await
        .unwrap();
    assert!(renewed.held);
    let other = ahead.claim_workflow("ahead", LEASE).await.unwrap().unwrap();
    assert_ne!(
        other.workflow_id, held.workflow_id,
        "a clock ten minutes ahead took over a lease of 30 s"
    );
    assert!(!other.takeover);
    assert!(
        ahead
            .claim_workflow("ahead", LEASE)
            .await
            .unwrap()
            .is_none(),
        "both leases hold"
    );
    assert!(
        behind
            .claim_workflow("behind", LEASE)
            .await
            .unwrap()
            .is_none()
    );

    // A released lease is expired by every clock: the replica behind takes it at once.
    ahead
        .release_lease(other.workflow_id, "ahead")
        .await
        .unwrap();
    let taken = behind
        .claim_workflow("behind", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.workflow_id, other.workflow_id);
    assert!(taken.takeover);
}

/// Workflows of a group wait in the order their pipelines were created by the database's
/// clock: a pipeline a replica ten minutes ahead took first still runs first, not after one
/// submitted later through a replica with the right time. Postgres only (one replica on SQLite).
#[tokio::test]
async fn pipelines_wait_in_the_order_the_database_saw_them() {
    let app = TestApp::spawn_api(Db::Postgres).await;
    let stores = replicas(&app).await;
    // What a replica prepares, stamped by its host's clock `off` from the true time.
    let prepare = |off: chrono::Duration| {
        let mut new = piculet::submission::Submission::from_file(config(Some("1")))
            .prepare(
                "linux/amd64",
                &piculet::pipeline::Limits::default(),
                &piculet::secrets::SecretBox::new([7; 32]),
            )
            .unwrap();
        new.created_at += off;
        new
    };
    let first = prepare(chrono::Duration::minutes(10));
    let first_id = first.id;
    stores[0].create_pipeline(first).await.unwrap();
    stores[1]
        .create_pipeline(prepare(chrono::Duration::zero()))
        .await
        .unwrap();
    let claimed = stores[1].claim_workflow("w", LEASE).await.unwrap().unwrap();
    assert_eq!(
        claimed.pipeline_id, first_id,
        "the first pipeline runs first"
    );
    assert!(
        stores[1]
            .claim_workflow("w", LEASE)
            .await
            .unwrap()
            .is_none()
    );
}
