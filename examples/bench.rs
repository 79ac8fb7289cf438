//! The benchmarks of the README's Performance section. Each figure is printed beside its
//! target and, where one is asked for, beside a baseline measured in the same run on the same
//! database. Run through `scripts/bench.sh`, which provides the Postgres and a release build.
//!
//! These are measurements, not tests: nothing here fails on a slow machine; it reports.

#[path = "../tests/it/common.rs"]
#[allow(unused_macros)]
mod common;
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Db, TOKEN, TestApp, fresh_database, step_id, wait_finished};
use futures::StreamExt as _;
use piculet::config::Settings;
use report::{percentile, row, rss_kib};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn raise_fd_limit() {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::main]
async fn main() {
    raise_fd_limit();
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    println!(
        "piculet benchmarks ({} cores; Postgres {})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        common::admin_url()
            .split('@')
            .next_back()
            .unwrap_or_default()
    );
    if wanted("submit") {
        submissions().await;
    }
    if wanted("start") {
        submit_to_start().await;
    }
    if wanted("logs") {
        log_throughput().await;
    }
    if wanted("sse") {
        sse_memory().await;
    }
    if wanted("replicas") {
        replica_latency().await;
    }
    if wanted("render") {
        render_rate();
    }
}

const SUBMISSION_PIPELINE: &str = "steps:\n  - name: build\n    image: golang:1.22\n    commands: [go build ./...]\n  - name: test\n    image: golang:1.22\n    commands: [go test ./...]\n  - name: lint\n    image: golang:1.22\n    commands: [go vet ./...]\n";

/// Submissions per second through the HTTP API into Postgres, beside inserting the same rows
/// with plain SQL.
async fn submissions() {
    println!("\nSubmissions (3-step pipeline, 32 concurrent clients, engine off)");
    let app = TestApp::spawn_api(Db::Postgres).await;
    let body = serde_json::to_vec(&json!({
        "name": "bench",
        "configs": [{"name": "ci", "content": SUBMISSION_PIPELINE}],
        "variables": {"CI_COMMIT_BRANCH": "main"},
        "labels": {"project": "bench"}
    }))
    .unwrap();
    let client = reqwest::Client::new();
    let url = app.url("/api/v1/pipelines");
    let total = 5000;
    let concurrency = 32;
    let submit_all = |n: usize| {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        async move {
            futures::stream::iter(0..n)
                .map(|_| {
                    let request = client
                        .post(&url)
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .header("content-type", "application/json")
                        .body(body.clone());
                    async move {
                        let r = request.send().await.unwrap();
                        assert_eq!(r.status(), 201);
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
        }
    };
    submit_all(200).await; // warm-up: connections, caches
    let started = Instant::now();
    submit_all(total).await;
    let api = rate(total, started.elapsed());

    // The same rows, inserted with plain SQL through one pool at the same concurrency: the
    // pipeline piculet makes of the same request (made once, outside the timing, with fresh
    // ids for each insert), through the statement piculet uses.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&app.database_url)
        .await
        .unwrap();
    let template = serde_json::from_slice::<piculet::submission::Submission>(&body)
        .unwrap()
        .prepare(
            "linux/amd64",
            &piculet::pipeline::Limits::default(),
            &piculet::secrets::SecretBox::new([7; 32]),
        )
        .unwrap_or_else(|r| panic!("{:#?}", r.errors));
    let insert_one = || {
        let pool = pool.clone();
        let mut new = template.clone();
        async move {
            new.id = Uuid::now_v7();
            new.created_at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
            for w in &mut new.workflows {
                w.id = Uuid::now_v7();
                for s in &mut w.steps {
                    s.id = Uuid::now_v7();
                }
            }
            piculet::store::insert_pipeline_postgres(&pool, &new)
                .await
                .unwrap();
        }
    };
    futures::stream::iter(0..200)
        .map(|_| insert_one())
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let started = Instant::now();
    futures::stream::iter(0..total)
        .map(|_| insert_one())
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let sql = rate(total, started.elapsed());
    row(
        "through the HTTP API into Postgres",
        format!("{api:.0}/s"),
        "≥ 2000/s",
        Some(api >= 2000.0),
    );
    row(
        "plain SQL, the same rows, same concurrency (baseline)",
        format!("{sql:.0}/s"),
        "",
        None,
    );
    row(
        "API / plain SQL",
        format!("{:.2}", api / sql),
        "≥ 0.5",
        Some(api / sql >= 0.5),
    );
}

/// Submit-to-first-step-started latency with the local backend, one pipeline at a time.
async fn submit_to_start() {
    println!("\nSubmit to first step started (local backend, one pipeline at a time)");
    let app = TestApp::spawn(Db::Postgres).await;
    let mut latencies = Vec::new();
    for i in 0..220 {
        let sent = chrono::Utc::now();
        let p: Value = app
            .submit_yaml("steps:\n  - name: a\n    image: alpine\n    commands: [true]\n")
            .await
            .json()
            .await
            .unwrap();
        let done = wait_finished(&app, p["id"].as_str().unwrap(), 60).await;
        let started = done["workflows"][0]["steps"][0]["started_at"]
            .as_str()
            .unwrap();
        let started = chrono::DateTime::parse_from_rfc3339(started).unwrap();
        if i >= 20 {
            // The first ones warm the engine and the database up.
            latencies.push(
                (started.with_timezone(&chrono::Utc) - sent)
                    .num_microseconds()
                    .unwrap() as f64
                    / 1000.0,
            );
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    row(
        "p50, request sent to step started",
        format!("{p50:.1} ms"),
        "",
        None,
    );
    row(
        "p99, request sent to step started",
        format!("{p99:.1} ms"),
        "≤ 50 ms",
        Some(p99 <= 50.0),
    );
}

/// Log lines stored per second from a step printing 1,000,000 lines, beside a COPY of the
/// same lines; and the delay until an SSE client sees the last one.
async fn log_throughput() {
    println!("\nLogs (one step printing 1,000,000 lines)");
    let app = TestApp::start(
        Db::Postgres,
        Settings {
            max_log_size: Some("1GiB".into()),
            ..Settings::default()
        },
        true,
    )
    .await;
    let lines = 1_000_000usize;
    let p: Value = app
        .submit_yaml(&format!(
            "steps:\n  - name: noisy\n    image: alpine\n    commands: [\"seq -f 'log line %.0f of a noisy step' 1 {lines}\"]\n"
        ))
        .await
        .json()
        .await
        .unwrap();
    let step = step_id(&p, "noisy");
    // An SSE client follows from the start and notes when the last line arrives.
    let follower = {
        let request = app
            .get(&format!("/api/v1/steps/{step}/logs"))
            .header("accept", "text/event-stream");
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let mut events = Box::pin(piculet::client::sse::events(response));
            // BENCH_NO_FOLLOW=1 measures storing alone, without this client.
            if std::env::var_os("BENCH_NO_FOLLOW").is_some() {
                return None;
            }
            // Each event is kept as received and only the last one decoded: the client's own
            // JSON work would otherwise take a share of the cores the server runs on.
            let mut last: Option<(String, chrono::DateTime<chrono::Utc>)> = None;
            while let Some(Ok(event)) = events.next().await {
                if event.event == "end" {
                    break;
                }
                last = Some((event.data, chrono::Utc::now()));
            }
            last.map(|(data, at)| (serde_json::from_str::<Value>(&data).unwrap(), at))
        })
    };
    let done = wait_finished(&app, p["id"].as_str().unwrap(), 600).await;
    let s = common::find_step(&done, "noisy").unwrap();
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(s[k].as_str().unwrap()).unwrap();
    let took = (at("finished_at") - at("started_at")).to_std().unwrap();
    let stored = rate(lines, took);
    let sse_delay = match follower.await.unwrap() {
        Some((last_line, seen_at)) => {
            let last_at =
                chrono::DateTime::parse_from_rfc3339(last_line["at"].as_str().unwrap()).unwrap();
            (seen_at - last_at.with_timezone(&chrono::Utc)).num_milliseconds()
        }
        None => -1,
    };

    // Baseline: COPY of the same lines into a table shaped like log_lines.
    let mut conn = {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap()
    };
    // A table like log_lines, its primary key included.
    sqlx::query("CREATE TABLE copy_lines (LIKE log_lines INCLUDING ALL)")
        .execute(&mut conn)
        .await
        .unwrap();
    let ts = chrono::Utc::now().to_rfc3339();
    let mut data = String::new();
    for i in 1..=lines {
        data.push_str(&format!(
            "{step}\t{i}\t{ts}\tlog line {i} of a noisy step\\n\n"
        ));
    }
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY copy_lines (step_id, number, ts, text) FROM STDIN")
        .await
        .unwrap();
    copy.send(data.as_bytes()).await.unwrap();
    copy.finish().await.unwrap();
    let copied = rate(lines, started.elapsed());

    row(
        "lines stored per second (step start to step end)",
        format!("{stored:.0}/s"),
        "≥ 200000/s",
        Some(stored >= 200_000.0),
    );
    row(
        "COPY of the same lines (baseline)",
        format!("{copied:.0}/s"),
        "",
        None,
    );
    row(
        "stored / COPY",
        format!("{:.2}", stored / copied),
        "≥ 0.5",
        Some(stored / copied >= 0.5),
    );
    row(
        "last line read from the step until an SSE client has it",
        format!("{sse_delay} ms"),
        "",
        None,
    );
}

/// What [`follow_arrivals`] collects: each line's data and arrival, by line number.
type Arrivals = BTreeMap<String, (String, chrono::DateTime<chrono::Utc>)>;

/// Follows a step's log over SSE, noting when each line arrives; the stream is subscribed when
/// this returns, and the task ends with the stream.
async fn follow_arrivals(app: &TestApp, step: &str) -> tokio::task::JoinHandle<Arrivals> {
    let response = app
        .get(&format!("/api/v1/steps/{step}/logs"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    tokio::spawn(async move {
        let mut events = Box::pin(piculet::client::sse::events(response));
        let mut seen = Arrivals::new();
        while let Some(Ok(event)) = events.next().await {
            if event.event == "end" {
                break;
            }
            if let Some(id) = event.id {
                seen.insert(id, (event.data, chrono::Utc::now()));
            }
        }
        seen
    })
}

/// When each line of a step reaches a follower on the replica that runs the step and one on
/// another replica (through Postgres `LISTEN/NOTIFY`), measured in the same run on the same
/// lines. Both apps run in this process, on one database.
async fn replica_latency() {
    let lines = 400usize;
    println!(
        "\nLive feed across replicas (a step printing {lines} lines 20 ms apart; followers on the replica running it and on another)"
    );
    let a = TestApp::start(Db::Postgres, Settings::default(), false).await;
    let b = TestApp::start_sharing(&a, Settings::default(), true).await;
    // The step waits for this file, created once both followers are subscribed.
    let gate = a.data_dir.join("bench-gate");
    let p: Value = a
        .submit_yaml(&format!(
            "steps:\n  - name: ticking\n    image: alpine\n    commands:\n      - 'for i in $(seq 1 1200); do [ -e {} ] && break; sleep 0.05; done'\n      - 'for i in $(seq 1 {lines}); do echo tick $i; sleep 0.02; done'\n",
            gate.display()
        ))
        .await
        .json()
        .await
        .unwrap();
    let step = step_id(&p, "ticking");
    let same = follow_arrivals(&b, &step).await;
    let other = follow_arrivals(&a, &step).await;
    std::fs::write(&gate, b"").unwrap();
    let (same, other) = (same.await.unwrap(), other.await.unwrap());
    wait_finished(&a, p["id"].as_str().unwrap(), 120).await;

    // From the moment the line was read from the step (its `at`) to its arrival; lines wait
    // up to 250 ms in a batch before they are stored, so the difference between the two
    // followers is what crossing replicas adds after storage.
    let (mut near, mut far, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for (id, (data, near_at)) in &same {
        let line: Value = serde_json::from_str(data).unwrap();
        if !line["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("tick ")
        {
            continue;
        }
        let Some((_, far_at)) = other.get(id) else {
            continue;
        };
        let read_at = chrono::DateTime::parse_from_rfc3339(line["at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
        near.push(ms(*near_at - read_at));
        far.push(ms(*far_at - read_at));
        added.push(ms(*far_at - *near_at));
    }
    for v in [&mut near, &mut far, &mut added] {
        v.sort_by(f64::total_cmp);
    }
    if added.is_empty() {
        row(
            "lines both followers got",
            "none".into(),
            "all",
            Some(false),
        );
        return;
    }
    let figure = |v: &[f64]| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            percentile(v, 0.5),
            percentile(v, 0.99)
        )
    };
    row(
        "ticks both followers got",
        format!("{} of {lines}", added.len()),
        "all",
        Some(added.len() == lines),
    );
    row(
        "line read to a follower on the replica running the step",
        figure(&near),
        "",
        None,
    );
    row(
        "line read to a follower on another replica",
        figure(&far),
        "",
        None,
    );
    row(
        "added by crossing replicas (same line, other minus same)",
        figure(&added),
        "≈ 100 ms or better",
        Some(percentile(&added, 0.99) <= 100.0),
    );
}

/// How the SSE clients of [`sse_memory`] reach the server.
#[derive(Clone, Copy)]
enum SseMode {
    /// An event stream as a connection's first request: piculet's lean HTTP/1 writer.
    Lean,
    /// An event stream after a first request on a kept-alive connection: hyper's HTTP/1.
    Hyper,
    /// HTTP/2 with prior knowledge, [`H2_STREAMS`] streams per connection: hyper's HTTP/2.
    Http2,
}

/// Event streams per HTTP/2 connection.
const H2_STREAMS: usize = 1000;

/// Resident memory a `piculet serve` process adds for 10,000 SSE clients following one step,
/// each way a client can follow; a fresh server process for each.
async fn sse_memory() {
    println!(
        "\nSSE clients (10,000 following one running step; a separate `piculet serve` process for each way)"
    );
    for (mode, name) in [
        (SseMode::Lean, "HTTP/1.1, lean writer"),
        (SseMode::Hyper, "HTTP/1.1, hyper"),
        (
            SseMode::Http2,
            "HTTP/2, hyper, 1,000 streams per connection",
        ),
    ] {
        sse_memory_of(mode, name).await;
    }
}

async fn sse_memory_of(mode: SseMode, name: &str) {
    let data_dir = std::env::temp_dir().join(format!("piculet-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let database_url = fresh_database(Db::Postgres, &data_dir).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("piculet"))
        .unwrap();
    let mut server = std::process::Command::new(binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("PICULET_DATABASE_URL", &database_url)
        .env("PICULET_DATA_DIR", &data_dir)
        .env("PICULET_API_TOKENS", TOKEN)
        .env("PICULET_LOG", "warn")
        .spawn()
        .expect("target/release/piculet; run through scripts/bench.sh");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{base}/api/v1/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p: Value = client
        .post(format!("{base}/api/v1/pipelines"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/yaml")
        .body(
            "steps:\n  - name: wait\n    image: alpine\n    commands: [echo waiting, sleep 600]\n",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let step = step_id(&p, "wait");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(server.id());
    let clients = 10_000;
    let (held, followers) = match mode {
        SseMode::Lean | SseMode::Hyper => http1_followers(port, &step, clients, mode).await,
        SseMode::Http2 => http2_followers(&base, &step, clients).await,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(server.id());
    let per = (after.saturating_sub(before)) as f64 / followers.max(1) as f64;
    println!("  {name}:");
    row(
        "clients following",
        format!("{followers}"),
        "10000",
        Some(followers == clients),
    );
    row(
        "server resident memory before / after",
        format!("{} / {} MiB", before / 1024, after / 1024),
        "",
        None,
    );
    row(
        "resident memory added per SSE client",
        format!("{per:.1} KiB"),
        "≤ 16 KiB",
        Some(per <= 16.0),
    );
    drop(held);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Something that holds followers' streams open until dropped.
type Held = Box<dyn std::any::Any + Send>;

/// `clients` HTTP/1.1 connections following `step`, opened 500 at a time; each is
/// established once its event stream's head and replayed line have arrived. Returns what holds
/// them and how many there are.
async fn http1_followers(
    port: u16,
    step: &str,
    clients: usize,
    mode: SseMode,
) -> (Vec<Held>, usize) {
    let follow = format!(
        "GET /api/v1/steps/{step}/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
    );
    let request = match mode {
        // hyper answers every request after a connection's first.
        SseMode::Hyper => {
            format!("GET /api/v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n{follow}")
        }
        SseMode::Lean | SseMode::Http2 => follow,
    };
    let mut connections: Vec<Held> = Vec::with_capacity(clients);
    for chunk in 0..(clients / 500) {
        let opened: Vec<_> = futures::future::join_all((0..500).map(|_| {
            let request = request.clone();
            let addr = format!("127.0.0.1:{port}");
            async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.write_all(request.as_bytes()).await.ok()?;
                // Wait for the stream's head and the replayed line: the stream is established.
                let mut seen = Vec::new();
                let mut buf = [0u8; 2048];
                while !String::from_utf8_lossy(&seen).contains("waiting") {
                    let n = s.read(&mut buf).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                Some(Box::new(s) as Held)
            }
        }))
        .await;
        let ok = opened.iter().filter(|c| c.is_some()).count();
        connections.extend(opened.into_iter().flatten());
        if ok < 500 {
            println!("  (batch {chunk}: only {ok} of 500 connections opened)");
        }
    }
    let followers = connections.len();
    (connections, followers)
}

/// `clients` HTTP/2 streams following `step`, [`H2_STREAMS`] per connection; each is
/// established once its response head has arrived. Returns what holds them (the streams and
/// their clients) and how many streams there are.
async fn http2_followers(base: &str, step: &str, clients: usize) -> (Vec<Held>, usize) {
    let url = format!("{base}/api/v1/steps/{step}/logs");
    let mut held: Vec<Held> = Vec::with_capacity(clients + clients / H2_STREAMS + 1);
    let mut followers = 0;
    for connection in 0..clients.div_ceil(H2_STREAMS) {
        // A client of its own is a connection of its own.
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let opened: Vec<_> =
            futures::future::join_all((0..H2_STREAMS.min(clients - followers)).map(|_| {
                client
                    .get(&url)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("accept", "text/event-stream")
                    .send()
            }))
            .await;
        let ok: Vec<Held> = opened
            .into_iter()
            .filter_map(|r| r.ok().filter(|r| r.status() == 200))
            .map(|r| Box::new(r) as Held)
            .collect();
        if ok.len() < H2_STREAMS {
            println!(
                "  (connection {connection}: only {} of {H2_STREAMS} streams opened)",
                ok.len()
            );
        }
        followers += ok.len();
        held.extend(ok);
        held.push(Box::new(client));
    }
    (held, followers)
}

/// Rendered pods per second for a 50-step workflow with every option.
fn render_rate() {
    use piculet::k8s::{KubernetesConfig, KubernetesSettings, RenderInput, render_workflow};
    println!("\nKubernetes rendering (50-step workflow, every option, everything allowed)");
    let step = include_str!("../src/k8s/testdata/every_option.yaml")
        .trim_start_matches("steps:\n")
        .to_string();
    let mut yaml = String::from(
        "services:\n  - name: db\n    image: postgres:16\n    commands: [postgres]\nsteps:\n",
    );
    for i in 0..50 {
        yaml.push_str(&step.replace("name: build", &format!("name: build-{i}")));
    }
    let submission = piculet::submission::Submission::from_file(yaml);
    let plan = submission
        .plan("linux/amd64", &piculet::pipeline::Limits::default())
        .unwrap_or_else(|r| panic!("{:#?}", r.errors))
        .plan
        .workflows
        .remove(0);
    let settings = KubernetesSettings {
        allow_from_step: Some("nodeSelector,tolerations,affinity,serviceAccountName,runtimeClassName,labels,annotations,hostUsers,secrets".into()),
        service_account_overwrite_allowed: Some("builder".into()),
        ..KubernetesSettings::default()
    };
    let config = KubernetesConfig::from_settings(&settings).unwrap();
    let input = RenderInput {
        pipeline_id: Uuid::now_v7(),
        workflow_id: Uuid::now_v7(),
        step_ids: BTreeMap::new(),
        attempt: 1,
        namespace: None,
        workflow: plan,
        secrets: BTreeMap::new(),
        registries: Vec::new(),
        environment: BTreeMap::from([("CI".to_string(), "woodpecker".to_string())]),
        redact_secrets: false,
    };
    let pods = render_workflow(&config, &input).unwrap().pods.len();
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(render_workflow(&config, &input).unwrap());
    }
    let elapsed = started.elapsed();
    // Serializing the rendered objects to JSON, as they are sent: the floor any renderer pays.
    let rendered = render_workflow(&config, &input).unwrap();
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(serde_json::to_vec(&rendered.to_list()).unwrap());
    }
    let serialize = started.elapsed();
    row(
        "pods rendered per second",
        format!("{:.0}/s", rate(pods * rounds, elapsed)),
        "",
        None,
    );
    row(
        "pods serialized to JSON per second (baseline)",
        format!("{:.0}/s", rate(pods * rounds, serialize)),
        "",
        None,
    );
}
