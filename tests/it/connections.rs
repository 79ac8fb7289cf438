//! The server's connections, byte for byte over raw TCP: event streams answered by the lean
//! writer (chunked or close-delimited, closed at their end, let go when the client hangs up)
//! and everything else by hyper (keep-alive, bodies that arrive in pieces, big heads, HTTP/2
//! with prior knowledge, smuggling attempts refused). Planning waits for a slot, and nothing
//! else does; the `Host` check holds on both writers; a body announced over the limit is
//! refused before it is sent, `Expect: 100-continue` or not; a connection with nothing in
//! progress is closed. Event streams are parsed by `eventsource-stream`, not by piculet's own
//! client.

use crate::common;

use std::time::Duration;

use common::{Db, TOKEN, TestApp};
use eventsource_stream::{Event, Eventsource as _};
use futures::StreamExt as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

fn get(path: &str, version: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
}

/// Sends `request` and reads until the server closes the connection.
async fn exchange(app: &TestApp, request: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr(app)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection at the end of the answer")
        .unwrap();
    split_head(&answer)
}

fn split_head(answer: &[u8]) -> (String, Vec<u8>) {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8(answer[..at + 2].to_vec())
            .unwrap()
            .to_lowercase(),
        answer[at + 4..].to_vec(),
    )
}

/// The body of a chunked message; panics unless it ends with the last chunk.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap(), 16).unwrap();
        body = &body[line + 2..];
        if size == 0 {
            assert_eq!(body, b"\r\n", "nothing after the last chunk");
            return out;
        }
        out.extend_from_slice(&body[..size]);
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
}

/// The events of an SSE body, parsed by `eventsource-stream` (not piculet's own client). An
/// event's `id` is the last id seen, as an EventSource's `lastEventId`.
async fn events(body: &[u8]) -> Vec<Event> {
    let body = bytes::Bytes::copy_from_slice(body);
    futures::stream::iter([Ok::<_, std::io::Error>(body)])
        .eventsource()
        .map(|e| e.expect("a well-formed event stream"))
        .collect()
        .await
}

async fn followers(app: &TestApp) -> f64 {
    app.text("/api/v1/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("piculet_sse_clients "))
        .expect("the gauge is shown")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn event_streams_are_written_lean_and_let_go() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let p: Value = app
        .submit_yaml(
            "steps:\n  - name: say\n    image: alpine\n    commands: [echo one, echo two]\n  - name: wait\n    image: alpine\n    depends_on: [say]\n    commands: [sleep 60]\n",
        )
        .await
        .json()
        .await
        .unwrap();
    let pipeline = p["id"].as_str().unwrap().to_string();
    let say = common::step_id(&p, "say");
    common::wait_step(&app, &pipeline, "wait", "running", 30).await;
    let path = format!("/api/v1/steps/{say}/logs");

    // HTTP/1.1: chunked, closed after the end event.
    let (head, body) = exchange(&app, &get(&path, "1.1", "")).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream\r\n",
        "cache-control: no-cache\r\n",
        "connection: close\r\n",
        "transfer-encoding: chunked\r\n",
        "x-request-id: ",
        "date: ",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
    let got = events(&dechunk(&body)).await;
    let (end, lines) = got.split_last().unwrap();
    let ids: Vec<&str> = lines.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"], "{got:?}");
    assert!(lines[4].data.contains(r#""text":"two\n""#), "{got:?}");
    assert_eq!(end.event, "end");
    assert!(end.data.contains(r#""status":"success""#));

    // HTTP/1.0 has no chunks: the body ends with the connection. Resumes after line 4.
    let (head, body) = exchange(&app, &get(&path, "1.0", "Last-Event-ID: 4\r\n")).await;
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    let got = events(&body).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].id, "5");
    assert_eq!(got[1].event, "end");

    // A refusal through the same writer: its length, its problem, then the close.
    let unknown = uuid::Uuid::now_v7();
    let (head, body) = exchange(
        &app,
        &get(&format!("/api/v1/steps/{unknown}/logs"), "1.1", ""),
    )
    .await;
    assert!(head.starts_with("http/1.1 404 not found\r\n"), "{head}");
    assert!(head.contains("content-type: application/problem+json\r\n"));
    assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 404);
    let (head, _) = exchange(&app, &get(&path, "1.1", "Last-Event-ID: soon\r\n")).await;
    assert!(head.starts_with("http/1.1 400 "), "{head}");

    // A follower of the running step holds a stream until it hangs up.
    let wait = common::step_id(&p, "wait");
    assert_eq!(followers(&app).await, 0.0);
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    let request = get(&format!("/api/v1/steps/{wait}/logs"), "1.1", "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(followers(&app).await, 1.0);
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while followers(&app).await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream of a client that hung up is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A head too big for the lean writer, or a request with a body, is hyper's: answered, and
    // the connection kept for the next request.
    let big = format!("X-Padding: {}\r\n", "p".repeat(10 * 1024));
    for (headers, body) in [(big.as_str(), ""), ("Content-Length: 2\r\n", "{}")] {
        let mut request = get(&format!("/api/v1/steps/{unknown}/logs"), "1.1", headers) + body;
        request.push_str("GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (head, rest) = exchange(&app, &request).await;
        assert!(head.starts_with("http/1.1 404 not found\r\n"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains("HTTP/1.1 200 OK\r\n"),
            "a second answer: {rest}"
        );
    }

    // HTTP/2 with prior knowledge, as a client that multiplexes its streams speaks it: hyper's,
    // through the same router, with the same events, every stream on one connection.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let follow = |path: &str| {
        h2.get(app.url(path))
            .bearer_auth(TOKEN)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
    };
    let response = follow(&path).await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "text/event-stream"
    );
    let got: Vec<Event> = tokio::time::timeout(
        Duration::from_secs(10),
        response
            .bytes_stream()
            .eventsource()
            .map(|e| e.expect("a well-formed event stream"))
            .collect(),
    )
    .await
    .expect("the stream ends after its end event");
    let (end, lines) = got.split_last().unwrap();
    let ids: Vec<&str> = lines.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"], "{got:?}");
    assert!(lines[4].data.contains(r#""text":"two\n""#), "{got:?}");
    assert_eq!(end.event, "end");
    assert!(end.data.contains(r#""status":"success""#));

    // The pipeline's events, live.
    let mut changes = follow(&format!("/api/v1/pipelines/{pipeline}/events"))
        .await
        .unwrap()
        .bytes_stream()
        .eventsource();
    let first = changes.next().await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.event.as_str()), ("1", "status"));
    // A follower that resets its stream is let go, like one that hangs up.
    let reset = follow(&format!("/api/v1/steps/{wait}/logs")).await.unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(followers(&app).await, 2.0);
    drop(reset);
    wait_for_followers(&app, 1.0).await;

    app.post(&format!("/api/v1/pipelines/{pipeline}/cancel"))
        .send()
        .await
        .unwrap();
    common::wait_finished(&app, &pipeline, 30).await;
    // The events stream ends with the pipeline, without gap or duplicate.
    let rest: Vec<Event> = tokio::time::timeout(
        Duration::from_secs(10),
        changes
            .map(|e| e.expect("a well-formed event stream"))
            .collect(),
    )
    .await
    .expect("the events stream ends with the pipeline");
    let (end, rest) = rest.split_last().unwrap();
    assert_eq!(end.event, "end", "{rest:?}");
    assert!(end.data.contains(r#""status":"canceled""#), "{end:?}");
    for (n, event) in rest.iter().enumerate() {
        assert_eq!(event.id, (n + 2).to_string(), "{rest:?}");
        assert_eq!(event.event, "status");
    }
    wait_for_followers(&app, 0.0).await;
}

/// Waits until the gauge shows `n` followers; fails after 10 s.
async fn wait_for_followers(app: &TestApp, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while followers(app).await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} followers, not {n}",
            followers(app).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_the_server_stays_up() {
    let app = TestApp::spawn_api(Db::Sqlite).await;
    let lint = |framing: &str| {
        format!(
            "POST /api/v1/lint HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/yaml\r\n{framing}\r\nsteps: []\r\n"
        )
    };
    let events = get("/api/v1/pipelines", "1.1", "");
    for (request, status) in [
        // Two lengths: which one a proxy in front believed is anyone's guess.
        (
            lint("Content-Length: 5\r\nContent-Length: 10\r\n"),
            "400 Bad Request",
        ),
        // A body whose end is not chunked's.
        (
            lint("Transfer-Encoding: chunked, identity\r\n"),
            "400 Bad Request",
        ),
        // HTTP/1.0 has no chunks.
        (
            lint("Transfer-Encoding: chunked\r\n").replacen("HTTP/1.1", "HTTP/1.0", 1),
            "400 Bad Request",
        ),
        // A space before the colon, which some servers read as the header and others not.
        (lint("Content-Length : 10\r\n"), "400 Bad Request"),
        // An event stream's head with a body: not the lean writer's, and refused alike.
        (
            events.replacen(
                "\r\n\r\n",
                "\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                1,
            ),
            "400 Bad Request",
        ),
        // A head larger than hyper's buffer.
        (
            get(
                "/api/v1/pipelines",
                "1.1",
                &format!("X-Padding: {}\r\n", "p".repeat(70 * 1024)),
            ),
            "431 Request Header Fields Too Large",
        ),
    ] {
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        // A refused request's connection is closed, and the bytes after its head never read
        // as a request of their own.
        let smuggled = "GET /api/v1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
        stream
            .write_all(format!("{request}{smuggled}").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection after a refusal")
            .unwrap_or_default();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 ") && answer[9..].starts_with(&format!("{status}\r\n")),
            "{request:.200}\n->\n{answer}"
        );
        assert_eq!(answer.matches("HTTP/1.").count(), 1, "{answer}");
    }
    let healthz = app.get("/api/v1/healthz").send().await.unwrap();
    assert_eq!(healthz.status(), 200, "the server is still up");
}

#[tokio::test]
async fn other_requests_keep_hyper_keep_alive_and_bodies_in_pieces() {
    let app = TestApp::spawn_api(Db::Sqlite).await;
    let body = "steps:\n  - name: build\n    image: alpine\n    commands: [make]\n";
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    // The head and half the body, then the rest: the bytes read while looking at the head
    // reach hyper in front of the rest.
    let (first, rest) = body.split_at(20);
    stream
        .write_all(
            format!(
                "POST /api/v1/pipelines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n{first}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    // A second request on the same connection, which the server then closes.
    stream
        .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201 Created\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(app.pipeline_count().await, 1);
}

/// A server with no engine whose planning slots the test can take: it runs work of its own in
/// them, as a slow submission would.
struct Planner {
    base: String,
    cpu: piculet::api::cpu::CpuPool,
    shutdown: tokio_util::sync::CancellationToken,
    data_dir: std::path::PathBuf,
    client: reqwest::Client,
}

impl Planner {
    async fn start(max_planning: &str, queue_timeout: &str) -> Planner {
        let data_dir = std::env::temp_dir().join(format!("piculet-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&data_dir).unwrap();
        let settings = piculet::config::Settings {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(common::fresh_database(Db::Sqlite, &data_dir).await),
            data_dir: Some(data_dir.display().to_string()),
            api_tokens: Some(TOKEN.into()),
            max_planning: Some(max_planning.into()),
            planning_queue_timeout: Some(queue_timeout.into()),
            ..Default::default()
        };
        let config = piculet::config::Config::from_settings(&settings).unwrap();
        let app = piculet::server::app(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = app.shutdown.clone();
        tokio::spawn(piculet::http::serve(listener, app.router, {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        }));
        Planner {
            base,
            cpu: app.cpu,
            shutdown,
            data_dir,
            client: reqwest::Client::new(),
        }
    }

    /// Takes `n` slots with work that runs until the returned senders are dropped; returns
    /// once all of it runs.
    async fn hold(&self, n: usize) -> Vec<std::sync::mpsc::Sender<()>> {
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
        let mut releases = Vec::new();
        for _ in 0..n {
            let (release, held) = std::sync::mpsc::channel::<()>();
            releases.push(release);
            let (cpu, started) = (self.cpu.clone(), started.clone());
            tokio::spawn(async move {
                cpu.run(move || {
                    started.send(()).unwrap();
                    // Until the sender is dropped.
                    let _ = held.recv_timeout(Duration::from_secs(60));
                })
                .await
            });
        }
        for _ in 0..n {
            running.recv().await.unwrap();
        }
        releases
    }

    fn post(&self, path: &str, yaml: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(yaml.to_string())
    }

    async fn get_status(&self, path: &str) -> u16 {
        let get = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send();
        // The held slots free only after a minute (`hold`): a request that waited on
        // planning would still wait at half of it, however loaded the machine.
        tokio::time::timeout(Duration::from_secs(30), get)
            .await
            .unwrap_or_else(|_| panic!("{path} waited on planning"))
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for Planner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

const SMALL_PIPELINE: &str = "steps:\n  - name: build\n    image: alpine\n    commands: [make]\n";

#[tokio::test]
async fn planning_waits_for_a_slot_and_nothing_else_does() {
    let planner = Planner::start("2", "30s").await;
    let releases = planner.hold(2).await;
    let lint = tokio::spawn(planner.post("/api/v1/lint", SMALL_PIPELINE).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!lint.is_finished(), "the lint did not wait for a slot");

    for path in ["/api/v1/healthz", "/api/v1/readyz", "/api/v1/pipelines"] {
        assert_eq!(planner.get_status(path).await, 200, "{path}");
    }
    assert!(!lint.is_finished(), "the lint still waits");

    drop(releases);
    // A lint left waiting would be refused (503) at the 30 s queue timeout, which the status
    // below catches: this bound only guards against a hang.
    let answer = tokio::time::timeout(Duration::from_secs(60), lint)
        .await
        .expect("a freed slot takes the waiting lint")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let report: Value = answer.json().await.unwrap();
    assert_eq!(report["valid"], true, "{report}");
}

#[tokio::test]
async fn planning_refuses_when_no_slot_frees_in_time() {
    let planner = Planner::start("1", "100ms").await;
    let releases = planner.hold(1).await;
    for path in ["/api/v1/render", "/api/v1/pipelines", "/api/v1/lint"] {
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            planner.post(path, SMALL_PIPELINE).send(),
        )
        .await
        .expect("refused after the queue timeout")
        .unwrap();
        assert_eq!(
            refused.headers()[reqwest::header::RETRY_AFTER],
            "1",
            "{path}"
        );
        let problem = common::expect_problem(refused, 503, "busy").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("PICULET_MAX_PLANNING"), "{detail}");
    }
    // Each app counts in its own registry: exactly the three refusals above.
    let metrics = planner
        .client
        .get(format!("{}/api/v1/metrics", planner.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "piculet_planning_refused_total 3"),
        "{metrics}"
    );
    let page: Value = planner
        .client
        .get(format!("{}/api/v1/pipelines", planner.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"],
        serde_json::json!([]),
        "the refused submission stored nothing"
    );

    drop(releases);
    let created = planner
        .post("/api/v1/pipelines", SMALL_PIPELINE)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "with the slot free again");
}

/// Sends `head` (a request head) and reads what the server answers within a few seconds, until
/// it closes the connection or stops sending.
async fn answer_to_head(app_addr: &str, head: &str) -> String {
    let mut stream = TcpStream::connect(app_addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    read_for_a_while(&mut stream).await
}

/// What arrives until the server closes or is silent for half a second.
async fn read_for_a_while(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn host_names_are_checked_on_both_writers() {
    let app = TestApp::spawn_api_with(
        Db::Sqlite,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            allowed_hosts: Some("ci.example.com, *.build.example".into()),
            ..Default::default()
        },
    )
    .await;
    let list =
        |host: &str| format!("GET /api/v1/pipelines HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    for (head, status) in [
        (list("Host: evil.example\r\n"), "421 Misdirected Request"),
        (list("Host: localhost:8080\r\n"), "200 OK"),
        (list("Host: 127.0.0.1\r\n"), "200 OK"),
        (list("Host: ci.example.com:443\r\n"), "200 OK"),
        (list("Host: one.build.example\r\n"), "200 OK"),
        (list("Host: build.example\r\n"), "421 Misdirected Request"),
        (list(""), "400 Bad Request"),
        (list("Host: localhost\r\nHost: evil.example\r\n"), "400 Bad Request"),
        // HTTP/1.0 may leave the name out; a browser never does.
        (
            "GET /api/v1/pipelines HTTP/1.0\r\n\r\n".to_string(),
            "200 OK",
        ),
        // In absolute form the target names the host, and it is checked too.
        (
            "GET http://evil.example/api/v1/pipelines HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
            "421 Misdirected Request",
        ),
    ] {
        let answer = answer_to_head(&addr(&app), &head).await;
        let version = if head.contains("HTTP/1.0") { "1.0" } else { "1.1" };
        assert!(
            answer.starts_with(&format!("HTTP/{version} {status}\r\n")),
            "{head}\n->\n{answer}"
        );
        if !status.starts_with("200") {
            assert!(answer.contains("application/problem+json"), "{answer}");
        }
    }

    // An event stream is answered by the lean writer, through the same check.
    let (head, body) = exchange(
        &app,
        &format!(
            "GET /api/v1/steps/{}/logs HTTP/1.1\r\nHost: evil.example\r\nAccept: text/event-stream\r\n\r\n",
            uuid::Uuid::now_v7()
        ),
    )
    .await;
    assert!(
        head.starts_with("http/1.1 421 misdirected request\r\n"),
        "{head}"
    );
    assert!(
        head.contains("connection: close\r\n"),
        "the lean writer's: {head}"
    );
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], "urn:piculet:problem:misdirected-request");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("\"evil.example\""),
        "{problem}"
    );
}

#[tokio::test]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_sent() {
    let app = TestApp::spawn_api(Db::Sqlite).await;
    let post = |extra: &str, length: usize| {
        format!(
            "POST /api/v1/lint HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/yaml\r\nContent-Length: {length}\r\n{extra}\r\n"
        )
    };

    // Told to wait for 100 Continue, the client sends nothing; the answer is 413 at once.
    for head in [
        post("Expect: 100-continue\r\n", 1_000_000_000),
        // Without Expect, before the body comes.
        post("", 1_000_000_000),
        // A request the lean writer would take but for its body: hyper's, and refused alike.
        format!(
            "GET /api/v1/steps/{}/logs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\nExpect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n",
            uuid::Uuid::now_v7()
        ),
    ] {
        let answer = answer_to_head(&addr(&app), &head).await;
        assert!(
            answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{head}\n->\n{answer}"
        );
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(
            answer.contains("urn:piculet:problem:payload-too-large"),
            "{answer}"
        );
        assert!(answer.contains("4194304 bytes"), "the limit: {answer}");
    }

    // Within the limit, the client is told to go on, and its body is read.
    let body = "steps:\n  - name: build\n    image: alpine\n    commands: [make]\n";
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(post("Expect: 100-continue\r\nConnection: close\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    let go_on = read_for_a_while(&mut stream).await;
    assert_eq!(go_on, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_for_a_while(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains(r#""valid":true"#), "{answer}");
}

/// An HTTP/2 client that sends its preface and then nothing, answering the server's pings as
/// every HTTP/2 library does, holds no connection for ever: with nothing in progress for the
/// head timeout (30 s), the server says goodbye and closes.
#[tokio::test]
async fn a_silent_http2_connection_is_closed() {
    let app = TestApp::spawn_api(Db::Sqlite).await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    // The preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // Only a guard against a hang: the close comes after 30 s of idleness.
    let frames = tokio::time::timeout(Duration::from_secs(150), async {
        let mut frames = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return frames;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return frames;
            }
            frames.push(head[3]);
            // A PING (type 6) that is no acknowledgement gets one, with its payload.
            if head[3] == 6 && head[4] & 1 == 0 {
                let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                let _ = stream.write_all(&ack).await;
            }
        }
    })
    .await
    .expect("the server closes a silent HTTP/2 connection");
    // Its own SETTINGS first (type 4), and a GOAWAY (type 7) before the close.
    assert_eq!(frames.first(), Some(&4), "{frames:?}");
    assert!(frames.contains(&7), "a GOAWAY before the close: {frames:?}");
}
