//! The test harness: a real piculet router on a real socket, over a fresh Postgres database or
//! a fresh SQLite file, reached with a real HTTP client.

#![allow(dead_code)]

use std::path::PathBuf;

use piculet::config::{Config, Settings};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use uuid::Uuid;

pub const TOKEN: &str = "test-token-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Postgres,
    Sqlite,
}

/// Runs each named `async fn(Db)` once against Postgres and once against SQLite.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::common::Db::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::common::Db::Postgres).await
                }
            }
        )*
    };
}

/// The server Postgres tests create their databases on: `PICULET_TEST_DATABASE_URL`, set by
/// `scripts/test.sh`, else `DATABASE_URL`. Without either the tests fail: they never skip.
pub fn admin_url() -> String {
    std::env::var("PICULET_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect(
            "no Postgres for the tests: run ./scripts/test.sh, which finds or starts one, or set \
             DATABASE_URL=postgres://user@host:port/db",
        )
}

pub struct TestApp {
    /// Stops the engine and the server.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Dropped with the app, so that a shared DATABASE_URL server does not fill up.
    pub postgres_database: Option<String>,
    pub base: String,
    pub client: reqwest::Client,
    pub database_url: String,
    pub data_dir: PathBuf,
    owns_data_dir: bool,
    pub db: Db,
}

/// A fresh, empty database of the given kind; returns its URL.
pub async fn fresh_database(db: Db, data_dir: &std::path::Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", data_dir.join("piculet.db").display()),
        Db::Postgres => {
            use sqlx::Connection as _;
            let admin = admin_url();
            let name = format!("piculet_test_{}", Uuid::now_v7().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the test Postgres: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            conn.close().await.ok();
            let (base, _) = admin.rsplit_once('/').expect("database URL with a path");
            let base = base.to_string();
            // Keep query parameters (host=…) of the admin URL.
            let query = admin
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{name}{query}")
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // A second replica leaves the data directory to the app that owns it.
        if self.owns_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        let Some(name) = self.postgres_database.take() else {
            return;
        };
        // Drop runs inside the test's runtime; the cleanup gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

impl TestApp {
    /// Starts piculet, its engine included, with the API token [`TOKEN`].
    pub async fn spawn(db: Db) -> TestApp {
        Self::start(db, Settings::default(), true).await
    }

    /// Starts the API alone: pipelines stay queued, for tests of the API itself.
    pub async fn spawn_api(db: Db) -> TestApp {
        Self::start(db, Settings::default(), false).await
    }

    pub async fn spawn_api_with(db: Db, settings: Settings) -> TestApp {
        Self::start(db, settings, false).await
    }

    pub async fn start(db: Db, settings: Settings, engine: bool) -> TestApp {
        let data_dir = std::env::temp_dir().join(format!("piculet-test-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&data_dir).unwrap();
        let database_url = fresh_database(db, &data_dir).await;
        Self::launch(db, database_url, data_dir, settings, engine, true).await
    }

    /// A second replica: another server on the database (and data directory, with its secret
    /// key) of `other`, which keeps owning the database.
    pub async fn start_sharing(other: &TestApp, settings: Settings, engine: bool) -> TestApp {
        Self::launch(
            other.db,
            other.database_url.clone(),
            other.data_dir.clone(),
            settings,
            engine,
            false,
        )
        .await
    }

    async fn launch(
        db: Db,
        database_url: String,
        data_dir: std::path::PathBuf,
        mut settings: Settings,
        engine: bool,
        owns_database: bool,
    ) -> TestApp {
        settings.listen.get_or_insert("127.0.0.1:0".into());
        settings.database_url = Some(database_url.clone());
        settings.data_dir = Some(data_dir.display().to_string());
        settings.api_tokens.get_or_insert(TOKEN.into());
        let config = Config::from_settings(&settings).expect("test settings are valid");
        let app = piculet::server::app(config).await.expect("app starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = app.shutdown.clone();
        if engine {
            tokio::spawn(app.engine.run(shutdown.clone()));
        }
        let router = app.router;
        tokio::spawn(async move {
            piculet::http::serve(listener, router, async move { shutdown.cancelled().await }).await;
        });
        TestApp {
            shutdown: app.shutdown,
            postgres_database: (owns_database && db == Db::Postgres).then(|| {
                database_url
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }),
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            database_url,
            data_dir,
            owns_data_dir: owns_database,
            db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(self.url(path))
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
    }

    /// The body of an authenticated `GET`, as text.
    pub async fn text(&self, path: &str) -> String {
        self.get(path).send().await.unwrap().text().await.unwrap()
    }

    /// A pipeline as `GET /pipelines/{id}` answers.
    pub async fn pipeline(&self, id: &str) -> serde_json::Value {
        self.get(&format!("/api/v1/pipelines/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn submit_yaml(&self, yaml: &str) -> reqwest::Response {
        self.post("/api/v1/pipelines")
            .header(CONTENT_TYPE, "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn submit_json(&self, body: &serde_json::Value) -> reqwest::Response {
        self.post("/api/v1/pipelines")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Every pipeline stored, through the API.
    pub async fn pipeline_count(&self) -> usize {
        let page: serde_json::Value = self
            .get("/api/v1/pipelines?limit=200")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["items"].as_array().unwrap().len()
    }
}

/// Asserts a problem+json answer and returns its body.
pub async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    slug: &str,
) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "application/problem+json",
        "content type"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        format!("urn:piculet:problem:{slug}"),
        "{body:#}"
    );
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a detail that says what to change: {body:#}"
    );
    body
}

/// Polls until the pipeline has finished; returns it. Panics after `seconds`.
pub async fn wait_finished(app: &TestApp, id: &str, seconds: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let p = app.pipeline(id).await;
        let status = p["status"].as_str().unwrap_or_default();
        if !matches!(status, "queued" | "running") {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pipeline {id} still {status} after {seconds}s: {p:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls until the step has the wanted status.
pub async fn wait_step(
    app: &TestApp,
    pipeline: &str,
    step: &str,
    wanted: &str,
    seconds: u64,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let p = app.pipeline(pipeline).await;
        if let Some(s) = find_step(&p, step)
            && s["status"] == wanted
        {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "step {step} never {wanted}: {p:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The step of that name in any workflow of the pipeline.
pub fn find_step(pipeline: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    pipeline["workflows"]
        .as_array()?
        .iter()
        .flat_map(|w| w["steps"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == name)
}

pub fn step_id(pipeline: &serde_json::Value, name: &str) -> String {
    find_step(pipeline, name).unwrap_or_else(|| panic!("no step {name}: {pipeline:#}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The stored log of a step, as text.
pub async fn log_text(app: &TestApp, step_id: &str) -> String {
    app.text(&format!("/api/v1/steps/{step_id}/logs")).await
}

/// Reads a step's SSE log stream: up to `max` line events (all when `None`), after
/// `last_event_id`; returns the events read (lines and the end event). An event's `id` is the
/// last id seen, as an EventSource's `lastEventId`.
pub async fn read_log_events(
    app: &TestApp,
    step_id: &str,
    last_event_id: Option<&str>,
    max: Option<usize>,
) -> Vec<eventsource_stream::Event> {
    use eventsource_stream::Eventsource as _;
    use futures::StreamExt as _;
    let mut request = app
        .get(&format!("/api/v1/steps/{step_id}/logs"))
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Parsed by eventsource-stream, not by piculet's own client.
    let mut events = response.bytes_stream().eventsource();
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            let end = event.event == "end";
            got.push(event);
            if end || max.is_some_and(|m| got.len() >= m) {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the log stream stalled after {} events",
        got.len()
    );
    got
}

/// A snapshot redaction for an id: the value must be a UUID, and the snapshot shows `label`,
/// so that a snapshot holds what the id is without the id itself.
pub fn uuid_redaction(label: &'static str) -> insta::internals::Redaction {
    insta::dynamic_redaction(move |value, path| {
        let text = value.as_str().unwrap_or_default();
        assert!(
            Uuid::parse_str(text).is_ok(),
            "{path}: not a UUID: {value:?}"
        );
        label
    })
}

/// A snapshot redaction for a time: a value must be an RFC 3339 timestamp, shown as `[time]`;
/// a null (not yet) stays null, so that the snapshot still tells which times are set.
pub fn time_redaction() -> insta::internals::Redaction {
    insta::dynamic_redaction(|value, path| {
        if value.resolve_inner().is_nil() {
            return value;
        }
        let text = value.as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{path}: not an RFC 3339 time: {value:?}"
        );
        "[time]".into()
    })
}
