//! The records piculet keeps and shows: pipelines, workflows and steps with their status, as
//! the store returns them and the API serializes them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::pipeline::Diagnostic;
/// What a step row stands for: the kind the pipeline planned, one type from plan to API.
pub use crate::pipeline::StepKind;

/// The state of a pipeline, workflow or step.
///
/// `failure` means a step exited non-zero; `error` means piculet or the cluster could not run
/// it, and then `reason` says why.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Success,
    Failure,
    Canceled,
    Error,
    Skipped,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Running,
        Status::Success,
        Status::Failure,
        Status::Canceled,
        Status::Error,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Canceled => "canceled",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether nothing will change this status any more.
    pub fn is_finished(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pipeline as listed: no workflows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10",
    "name": "acme/api #42",
    "status": "queued",
    "reason": null,
    "labels": {"project": "acme/api"},
    "namespace": null,
    "created_at": "2026-11-24T10:00:00Z",
    "started_at": null,
    "finished_at": null
}))]
pub struct PipelineSummary {
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    /// Why the pipeline ended as it did, in words a person can act on.
    pub reason: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes namespace the submission asked for, if any.
    pub namespace: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A pipeline with its workflows and steps.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10",
    "name": "acme/api #42",
    "status": "queued",
    "reason": null,
    "labels": {"project": "acme/api"},
    "namespace": null,
    "created_at": "2026-11-24T10:00:00Z",
    "started_at": null,
    "finished_at": null,
    "retry_of": null,
    "warnings": [],
    "workflows": [{
        "id": "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e11",
        "name": "build",
        "matrix": {},
        "status": "queued",
        "reason": null,
        "started_at": null,
        "finished_at": null,
        "steps": [{
            "id": "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e12",
            "name": "test",
            "kind": "step",
            "status": "queued",
            "reason": null,
            "exit_code": null,
            "attempt": 0,
            "started_at": null,
            "finished_at": null
        }]
    }]
}))]
pub struct Pipeline {
    #[serde(flatten)]
    pub summary: PipelineSummary,
    /// The pipeline this one retries, if any.
    pub retry_of: Option<Uuid>,
    /// Keys piculet accepted but cannot honour, as `POST /lint` reports them.
    pub warnings: Vec<Diagnostic>,
    pub workflows: Vec<Workflow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Workflow {
    pub id: Uuid,
    /// The config's name; the elements of a matrix share it and differ in `matrix`.
    pub name: String,
    pub matrix: BTreeMap<String, String>,
    pub status: Status,
    pub reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Services and steps, in the order they were declared.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub id: Uuid,
    pub name: String,
    pub kind: StepKind,
    pub status: Status,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    /// How many times the step was started: 0 before its start, 1 for a first run, more when
    /// piculet ran it again because an earlier attempt was interrupted (a replica died with
    /// it); the step's events say why.
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Pipeline,
    Workflow,
    Step,
}

/// A state change of a pipeline, one of its workflows or one of its steps, as stored and as
/// streamed by `GET /pipelines/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "seq": 42, "pipeline_id": "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10", "subject": "step",
    "id": "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e12", "name": "test", "status": "failure",
    "exit_code": 1, "reason": null, "at": "2026-11-24T10:00:05Z"
}))]
pub struct Event {
    /// Increases with every event; the SSE `id`, and what `Last-Event-ID` resumes after.
    pub seq: i64,
    pub pipeline_id: Uuid,
    pub subject: Subject,
    /// The id of the pipeline, workflow or step.
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// One stored line of a step's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// 1-based, without gaps; the SSE `id`.
    pub number: i64,
    // RFC 3339 in UTC (`Z`), with 0, 3, 6 or 9 fraction digits as needed: chrono's own form.
    pub at: DateTime<Utc>,
    /// The line with its newline; a very long line is stored in pieces, and the last line may
    /// lack the newline, so that the pieces together are the exact output.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_times_read_as_chrono_writes_them() {
        for t in [
            "2026-11-24T04:43:09Z",
            "2026-11-24T04:43:09.120Z",
            "2026-11-24T04:43:09.123456Z",
            "2026-11-24T04:43:09.100200Z",
            "2026-11-24T04:43:09.123456789Z",
            "0001-01-01T00:00:00.000000001Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let at: DateTime<Utc> = t.parse().unwrap();
            let line = LogLine {
                number: 1,
                at,
                text: String::new(),
            };
            let ours = serde_json::to_value(&line).unwrap()["at"].clone();
            assert_eq!(ours, t, "{t}");
            assert_eq!(ours, serde_json::to_value(at).unwrap(), "{t}");
        }
    }

    #[test]
    fn status_text_round_trips() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Status::parse("done"), None);
        assert!(!Status::Running.is_finished());
        assert!(Status::Skipped.is_finished());
    }
}
