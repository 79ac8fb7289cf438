//! The CLI as a client of a running server: `submit`, `logs`, `status`, `cancel`.

pub mod sse;

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;

use futures::StreamExt as _;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use uuid::Uuid;

use crate::model::{Event, LogLine, Pipeline, Status, Subject};
use crate::submission::{ConfigFile, SecretValue, Submission};

/// A failure of a client command: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {server}: {source}; is `piculet serve` running there (PICULET_SERVER)?")]
    Connect {
        server: String,
        source: reqwest::Error,
    },
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Input(String),
}

/// Talks to one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Client {
        Client {
            base: server.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    /// Sends a request and turns a problem answer into one readable line.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                server: self.base.clone(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let mut message = format!(
            "{} ({status})",
            body["detail"]
                .as_str()
                .unwrap_or("the server refused the request")
        );
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
                let place = match (e["line"].as_u64(), e["column"].as_u64()) {
                    (Some(l), Some(c)) => format!("{}:{l}:{c}", e["config"].as_str().unwrap_or("")),
                    _ => format!(
                        "{}{}",
                        e["config"].as_str().unwrap_or(""),
                        e["pointer"].as_str().unwrap_or("")
                    ),
                };
                message.push_str(&format!(
                    "\n  {place}: {}",
                    e["message"].as_str().unwrap_or("")
                ));
            }
        }
        Err(ClientError::Api(message))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Api(format!("unexpected answer from the server: {e}")))
    }

    pub async fn submit(&self, submission: &Submission) -> Result<Pipeline, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, "/pipelines")
                .json(submission),
        )
        .await
    }

    pub async fn pipeline(&self, id: Uuid) -> Result<Pipeline, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/pipelines/{id}")))
            .await
    }

    pub async fn cancel(&self, id: Uuid) -> Result<Pipeline, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/pipelines/{id}/cancel")))
            .await
    }

    /// Prints a step's log; with `follow`, until the step ends. Returns its final status when
    /// followed.
    pub async fn print_log(
        &self,
        step_id: Uuid,
        follow: bool,
        prefix: &str,
    ) -> Result<Option<Status>, ClientError> {
        if !follow {
            let response = self
                .send(self.request(reqwest::Method::GET, &format!("/steps/{step_id}/logs")))
                .await?;
            let mut body = response.bytes_stream();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| ClientError::Api(format!("the log stream broke: {e}")))?;
                let _ = out.write_all(&chunk);
            }
            return Ok(None);
        }
        let mut last: Option<String> = None;
        // Reconnect with Last-Event-ID when the stream breaks, as a browser would.
        for _attempt in 0..10 {
            let mut request = self
                .request(reqwest::Method::GET, &format!("/steps/{step_id}/logs"))
                .header(ACCEPT, "text/event-stream");
            if let Some(id) = &last {
                request = request.header("last-event-id", id.clone());
            }
            let mut events = Box::pin(sse::events(self.send(request).await?));
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                if event.event == "end" {
                    let end: serde_json::Value =
                        serde_json::from_str(&event.data).unwrap_or_default();
                    return Ok(serde_json::from_value(end["status"].clone()).ok());
                }
                if let Ok(line) = serde_json::from_str::<LogLine>(&event.data) {
                    last = event.id.clone();
                    let mut out = std::io::stdout().lock();
                    let text = line.text.strip_suffix('\n').unwrap_or(&line.text);
                    let _ = writeln!(out, "{prefix}{text}");
                }
            }
        }
        Err(ClientError::Api(format!(
            "lost the log stream of step {step_id}"
        )))
    }

    /// Follows a pipeline: every step's log as it runs, prefixed with its name; returns the
    /// pipeline's final status.
    pub async fn follow(&self, pipeline: &Pipeline) -> Result<Status, ClientError> {
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
        let mut following: HashSet<Uuid> = HashSet::new();
        let mut logs = futures::stream::FuturesUnordered::new();
        let mut last: Option<String> = None;
        let mut final_status = None;
        'reconnect: for _attempt in 0..10 {
            let mut request = self
                .request(reqwest::Method::GET, &format!("/pipelines/{id}/events"))
                .header(ACCEPT, "text/event-stream");
            if let Some(seq) = &last {
                request = request.header("last-event-id", seq.clone());
            }
            let mut events = Box::pin(sse::events(self.send(request).await?));
            loop {
                tokio::select! {
                    event = events.next() => {
                        let Some(Ok(event)) = event else { continue 'reconnect };
                        if event.event == "end" {
                            let end: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                            final_status = serde_json::from_value(end["status"].clone()).ok();
                            break 'reconnect;
                        }
                        last = event.id.clone();
                        let Ok(change) = serde_json::from_str::<Event>(&event.data) else { continue };
                        if change.subject == Subject::Step
                            && change.status != Status::Queued
                            && change.status != Status::Skipped
                            && following.insert(change.id)
                        {
                            let name = names.get(&change.id).cloned().unwrap_or(change.name.clone());
                            let prefix = format!("{name:>width$} | ");
                            logs.push(async move { self.print_log(change.id, true, &prefix).await });
                        }
                        if change.subject == Subject::Step && change.status.is_finished() && change.status != Status::Success {
                            let name = names.get(&change.id).cloned().unwrap_or(change.name.clone());
                            eprintln!("piculet: {name}: {}{}", change.status, change.reason.map(|r| format!(" ({r})")).unwrap_or_default());
                        }
                    }
                    Some(_) = logs.next(), if !logs.is_empty() => {}
                }
            }
        }
        while logs.next().await.is_some() {}
        final_status
            .ok_or_else(|| ClientError::Api(format!("lost the event stream of pipeline {id}")))
    }
}

/// Builds a submission from pipeline files, as `piculet submit` and `piculet lint` read them.
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

/// One line per workflow and step, for `piculet status`.
pub fn status_table(pipeline: &Pipeline) -> String {
    let p = &pipeline.summary;
    let mut out = format!(
        "pipeline {} {:?}: {}{}\n",
        p.id,
        p.name,
        p.status,
        p.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    for w in &pipeline.workflows {
        let matrix = if w.matrix.is_empty() {
            String::new()
        } else {
            format!(" {:?}", w.matrix)
        };
        out.push_str(&format!("  workflow {}{matrix}: {}\n", w.name, w.status));
        for s in &w.steps {
            out.push_str(&format!(
                "    {:<9} {:<24} {}{}{}\n",
                s.status.as_str(),
                s.name,
                s.id,
                s.exit_code
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default(),
                s.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// Parses an id given on the command line.
pub fn parse_id(text: &str) -> Result<Uuid, ClientError> {
    Uuid::parse_str(text).map_err(|_| ClientError::Input(format!("{text:?} is not an id (a UUID)")))
}
