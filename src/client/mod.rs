//! The CLI as a client of a running server: its requests, problem answers turned into one
//! readable line, and the event and log streams it follows, resumed with `Last-Event-ID` when
//! they break.

pub mod output;
pub mod sse;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use uuid::Uuid;

use crate::model::{Event, LogLine, Pipeline, PipelineSummary, Status, Subject};
use crate::pipeline::Diagnostic;
use crate::run::SecretValue;
use crate::submission::{ConfigFile, Submission};

/// How many times in a row a followed stream is reopened after it broke without delivering an
/// event in between; the server sends a keep-alive every 15 s, so a stream that stays broken
/// this long is a server gone, not a hiccup.
const RECONNECTS: u32 = 5;

/// The first wait before reopening a broken stream; each next one doubles, up to
/// [`RECONNECT_MAX_DELAY`], with jitter so that the followers of a restarted server do not all
/// come back at once.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(500);

/// The longest wait before reopening a broken stream (twice that with the jitter).
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// The waits before each of the [`RECONNECTS`] reopenings of a stream; it ends when they are
/// used up.
fn reconnect_waits() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::new()
        .with_min_delay(RECONNECT_FIRST_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY)
        .with_jitter()
        .with_max_times(RECONNECTS as usize)
        .build()
}

/// A failure of a client command: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {server}: {reason}; is `piculet serve` running there (PICULET_SERVER)?")]
    Connect { server: String, reason: String },
    #[error("{server} did not answer within {timeout} (PICULET_REQUEST_TIMEOUT)")]
    Timeout { server: String, timeout: String },
    /// The server refused the request; `errors` are a validation problem's diagnostics.
    #[error("{detail} ({status})")]
    Refused {
        status: u16,
        detail: String,
        errors: Vec<Diagnostic>,
    },
    #[error("{0}")]
    Stream(String),
    #[error("{0}")]
    Input(String),
}

/// The innermost cause of an error: reqwest's own text ("error sending request for url …")
/// hides the reason (connection refused, DNS) in its sources.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A page of `GET /pipelines`.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub items: Vec<PipelineSummary>,
    pub next_cursor: Option<String>,
}

/// The `end` event of a step's log stream.
#[derive(Debug, Clone, Deserialize)]
pub struct LogEnd {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

/// What `piculet list` asks for.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub statuses: Vec<Status>,
    pub labels: Vec<(String, String)>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Talks to one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl Client {
    /// A client of `server`; `timeout` bounds every request, and every wait for the next byte
    /// of a stream.
    pub fn new(
        server: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| ClientError::Input(format!("cannot set up HTTP: {}", cause(&e))))?;
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            timeout,
            http,
        })
    }

    /// A request that must be answered whole within the timeout.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.stream_request(method, path).timeout(self.timeout)
    }

    /// A request whose answer may stream for as long as the server keeps it open; only each
    /// read is bounded (by the client's read timeout).
    fn stream_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout {
                server: self.base.clone(),
                timeout: humantime::format_duration(self.timeout).to_string(),
            }
        } else {
            ClientError::Connect {
                server: self.base.clone(),
                reason: cause(&e),
            }
        }
    }

    /// Sends a request; a problem answer becomes [`ClientError::Refused`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let detail = body["detail"]
            .as_str()
            .or_else(|| body["title"].as_str())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused"))
            .to_string();
        let errors = body
            .get("errors")
            .and_then(|e| serde_json::from_value::<Vec<Diagnostic>>(e.clone()).ok())
            .unwrap_or_default();
        Err(ClientError::Refused {
            status: status.as_u16(),
            detail,
            errors,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Stream(format!("unexpected answer from the server: {e}")))
    }

    /// Submits; with an idempotency key, a repeated submission returns the first pipeline.
    pub async fn submit(
        &self,
        submission: &Submission,
        idempotency_key: Option<&str>,
    ) -> Result<Pipeline, ClientError> {
        let mut request = self
            .request(reqwest::Method::POST, "/pipelines")
            .json(submission);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.json(request).await
    }

    pub async fn pipeline(&self, id: Uuid) -> Result<Pipeline, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/pipelines/{id}")))
            .await
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Page, ClientError> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if !query.statuses.is_empty() {
            let statuses: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
            pairs.push(("status", statuses.join(",")));
        }
        for (k, v) in &query.labels {
            pairs.push(("label", format!("{k}={v}")));
        }
        if let Some(c) = &query.cursor {
            pairs.push(("cursor", c.clone()));
        }
        if let Some(l) = query.limit {
            pairs.push(("limit", l.to_string()));
        }
        self.json(
            self.request(reqwest::Method::GET, "/pipelines")
                .query(&pairs),
        )
        .await
    }

    pub async fn cancel(&self, id: Uuid) -> Result<Pipeline, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/pipelines/{id}/cancel")))
            .await
    }

    pub async fn retry(&self, id: Uuid) -> Result<Pipeline, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/pipelines/{id}/retry")))
            .await
    }

    /// The SSE stream at `path`, reopened after the last event seen when it breaks.
    pub fn stream(&self, path: String) -> Resuming<'_> {
        Resuming {
            client: self,
            path,
            last_id: None,
            current: None,
            opened: false,
            waits: reconnect_waits(),
            ended: false,
        }
    }

    /// Writes a step's whole stored log to stdout.
    pub async fn print_log(&self, step_id: Uuid) -> Result<(), ClientError> {
        let response = self
            .send(self.stream_request(reqwest::Method::GET, &format!("/steps/{step_id}/logs")))
            .await?;
        let mut body = response.bytes_stream();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ClientError::Stream(format!("the log of step {step_id} broke: {}", cause(&e)))
            })?;
            out.write_all(&chunk)
                .map_err(|e| ClientError::Stream(format!("cannot write the log: {e}")))?;
        }
        Ok(())
    }

    /// Follows a step's log until the step ends, every line to stdout after `prefix`; returns
    /// how the step ended.
    pub async fn follow_log(&self, step_id: Uuid, prefix: &str) -> Result<LogEnd, ClientError> {
        let mut events = self.stream(format!("/steps/{step_id}/logs"));
        while let Some(event) = events.next().await? {
            if event.event == "end" {
                return serde_json::from_str(&event.data).map_err(|e| {
                    ClientError::Stream(format!(
                        "the end of step {step_id}'s log is unreadable: {e}"
                    ))
                });
            }
            if let Ok(line) = serde_json::from_str::<LogLine>(&event.data) {
                let text = line.text.strip_suffix('\n').unwrap_or(&line.text);
                anstream::println!("{prefix}{text}");
            }
        }
        Err(ClientError::Stream(format!(
            "the log stream of step {step_id} ended without its end"
        )))
    }

    /// Follows a pipeline: every step's lines as it runs, prefixed with its name, a line on
    /// stderr as each step ends (with its duration); returns the pipeline as it ended.
    pub async fn follow(&self, pipeline: &Pipeline) -> Result<Pipeline, ClientError> {
        let id = pipeline.summary.id;
        let several = pipeline.workflows.len() > 1;
        let names: BTreeMap<Uuid, String> = pipeline
            .workflows
            .iter()
            .flat_map(|w| {
                w.steps.iter().map(move |s| {
                    let name = if several {
                        format!("{}/{}", w.name, s.name)
                    } else {
                        s.name.clone()
                    };
                    (s.id, name)
                })
            })
            .collect();
        let width = names.values().map(String::len).max().unwrap_or(0);
        let name_of = |e: &Event| names.get(&e.id).cloned().unwrap_or_else(|| e.name.clone());

        // A step's line is printed once both its last log line and its final event are in,
        // so that it comes after the step's output.
        let (done_tx, mut done_rx) =
            tokio::sync::mpsc::unbounded_channel::<(Uuid, Result<LogEnd, ClientError>)>();
        let mut started: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        let mut following: HashSet<Uuid> = HashSet::new();
        let mut finished: HashMap<Uuid, Event> = HashMap::new();
        let mut logs_done: HashSet<Uuid> = HashSet::new();
        let report = |e: &Event, started: &HashMap<Uuid, DateTime<Utc>>| {
            let took = started.get(&e.id).map(|s| output::duration(*s, e.at));
            anstream::eprintln!(
                "{}",
                output::step_done(
                    &name_of(e),
                    width,
                    e.status,
                    took,
                    output::outcome(e.status, e.exit_code, e.reason.as_deref())
                )
            );
        };

        let mut events = self.stream(format!("/pipelines/{id}/events"));
        loop {
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event? else { break };
                    if event.event == "end" {
                        break;
                    }
                    let Ok(change) = serde_json::from_str::<Event>(&event.data) else { continue };
                    if change.subject != Subject::Step {
                        continue;
                    }
                    if change.status == Status::Running {
                        started.entry(change.id).or_insert(change.at);
                    }
                    if change.status != Status::Queued
                        && change.status != Status::Skipped
                        && following.insert(change.id)
                    {
                        let prefix = output::paint(
                            output::BOLD,
                            &format!("{:>width$} | ", name_of(&change)),
                        );
                        let client = self.clone();
                        let tx = done_tx.clone();
                        let step = change.id;
                        tokio::spawn(async move {
                            let result = client.follow_log(step, &prefix).await;
                            let _ = tx.send((step, result));
                        });
                    }
                    if change.status.is_finished() {
                        if !following.contains(&change.id) || logs_done.contains(&change.id) {
                            report(&change, &started);
                        }
                        finished.insert(change.id, change);
                    }
                }
                Some((step, result)) = done_rx.recv() => {
                    log_done(step, result, &names);
                    logs_done.insert(step);
                    if let Some(e) = finished.get(&step) {
                        report(e, &started);
                    }
                }
            }
        }
        // Every step has ended with the pipeline, so every log stream ends too.
        drop(done_tx);
        while let Some((step, result)) = done_rx.recv().await {
            log_done(step, result, &names);
            if let Some(e) = finished.get(&step) {
                report(e, &started);
            }
        }
        self.pipeline(id).await
    }
}

/// Says so when a step's log could not be followed to its end; the pipeline is still followed.
fn log_done(step: Uuid, result: Result<LogEnd, ClientError>, names: &BTreeMap<Uuid, String>) {
    if let Err(e) = result {
        let name = names
            .get(&step)
            .cloned()
            .unwrap_or_else(|| step.to_string());
        anstream::eprintln!("piculet: warning: the log of {name} is incomplete: {e}");
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<sse::SseEvent, reqwest::Error>> + Send>>;

/// An SSE stream that reopens itself with `Last-Event-ID` when it breaks, as a browser's
/// `EventSource` does, at most [`RECONNECTS`] times in a row without an event in between.
pub struct Resuming<'a> {
    client: &'a Client,
    path: String,
    last_id: Option<String>,
    current: Option<EventStream>,
    opened: bool,
    /// The waits left before giving up; renewed by every event.
    waits: backon::ExponentialBackoff,
    ended: bool,
}

impl Resuming<'_> {
    /// The next event; `None` after the `end` event.
    /// Cancel-safe: dropping the future loses no event, at worst a connection attempt.
    pub async fn next(&mut self) -> Result<Option<sse::SseEvent>, ClientError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(current) = self.current.as_mut() else {
                let mut request = self
                    .client
                    .stream_request(reqwest::Method::GET, &self.path)
                    .header(ACCEPT, "text/event-stream");
                if let Some(id) = &self.last_id {
                    request = request.header("last-event-id", id.clone());
                }
                match self.client.send(request).await {
                    Ok(response) => {
                        self.opened = true;
                        self.current = Some(Box::pin(sse::events(response)));
                    }
                    // A refusal, or a server never reached, is said at once; only a stream
                    // that was open is worth waiting for.
                    Err(e @ (ClientError::Connect { .. } | ClientError::Timeout { .. }))
                        if self.opened =>
                    {
                        self.broke(e.to_string()).await?;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            match current.next().await {
                Some(Ok(event)) => {
                    self.waits = reconnect_waits();
                    if event.id.is_some() {
                        self.last_id = event.id.clone();
                    }
                    self.ended = event.event == "end";
                    return Ok(Some(event));
                }
                Some(Err(e)) => {
                    self.current = None;
                    self.broke(cause(&e)).await?;
                }
                None => {
                    self.current = None;
                    self.broke("the server closed it".into()).await?;
                }
            }
        }
    }

    async fn broke(&mut self, why: String) -> Result<(), ClientError> {
        let Some(wait) = self.waits.next() else {
            return Err(ClientError::Stream(format!(
                "lost the stream {} after {RECONNECTS} reconnects: {why}",
                self.path
            )));
        };
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// Builds a submission from pipeline files, as `piculet submit`, `lint` and `render` read them.
pub fn submission_from_files(
    files: &[PathBuf],
    vars: &[(String, String)],
    secrets: &[(String, String)],
) -> Result<Submission, ClientError> {
    let mut configs = Vec::new();
    for path in files {
        let content = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", path.display())))?;
        configs.push(ConfigFile {
            name: workflow_name(path),
            content,
        });
    }
    Ok(Submission {
        name: files.first().map(|f| f.display().to_string()),
        configs,
        variables: vars.iter().cloned().collect(),
        secrets: secrets
            .iter()
            .map(|(name, value)| SecretValue {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        ..Submission::default()
    })
}

/// A workflow's name from its file: `.woodpecker/build.yaml` is `build`.
pub fn workflow_name(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.trim_start_matches('.').to_string()
}

/// Parses an id given on the command line.
pub fn parse_id(text: &str) -> Result<Uuid, ClientError> {
    Uuid::parse_str(text).map_err(|_| ClientError::Input(format!("{text:?} is not an id (a UUID)")))
}

/// The exit code of a command that waited for, or was asked about, something with this
/// status; the table is the README's "Exit codes".
pub fn exit_code(status: Status) -> u8 {
    match status {
        Status::Success => 0,
        Status::Failure | Status::Skipped => 1,
        Status::Error => 3,
        Status::Canceled => 4,
        Status::Queued | Status::Running => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A broken stream is reopened after a real wait, RECONNECTS times, then given up.
    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_waits_before_each_reconnect_and_gives_up_after_its_bound() {
        let client = Client::new("http://127.0.0.1:9", None, Duration::from_secs(1)).unwrap();
        let mut stream = client.stream("/pipelines/x/events".into());
        for _ in 0..RECONNECTS {
            let before = tokio::time::Instant::now();
            stream.broke("gone".into()).await.unwrap();
            let waited = before.elapsed();
            assert!(waited >= RECONNECT_FIRST_DELAY, "waited only {waited:?}");
            assert!(waited <= RECONNECT_MAX_DELAY * 2, "waited {waited:?}");
        }
        let before = tokio::time::Instant::now();
        let Err(ClientError::Stream(message)) = stream.broke("gone".into()).await else {
            panic!("the stream was not given up");
        };
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(message.contains("after 5 reconnects: gone"), "{message}");
    }
}
