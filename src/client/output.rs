//! What the CLI prints: statuses, durations, tables and summaries, coloured through `anstyle`.
//! The escapes are written unconditionally here; `anstream`'s stdout and stderr drop them
//! when the stream is not a terminal or `NO_COLOR` is set, so pipes and files get plain text.

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Utc};

use crate::model::{Event, Pipeline, PipelineSummary, Status, StepKind, Subject};
use crate::pipeline::Diagnostic;

const GREEN: Style = AnsiColor::Green.on_default();
const RED: Style = AnsiColor::Red.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const CYAN: Style = AnsiColor::Cyan.on_default();
const DIM: Style = Style::new().dimmed();
pub const BOLD: Style = Style::new().bold();

/// `text` in `style`; padding must be applied before, since escapes have no width.
pub fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

fn status_style(status: Status) -> Style {
    match status {
        Status::Success => GREEN,
        Status::Failure | Status::Error => RED,
        Status::Canceled => YELLOW,
        Status::Running => CYAN,
        Status::Queued | Status::Skipped => DIM,
    }
}

/// The status, coloured, padded to `width` columns.
pub fn status(status: Status, width: usize) -> String {
    paint(
        status_style(status),
        &format!("{:<width$}", status.as_str()),
    )
}

/// A one-character mark of a finished status, as `gh run watch` shows them.
pub fn mark(status: Status) -> String {
    let mark = match status {
        Status::Success => "✓",
        Status::Failure | Status::Error => "✗",
        Status::Canceled => "!",
        Status::Running => "*",
        Status::Queued | Status::Skipped => "-",
    };
    paint(status_style(status), mark)
}

/// What ended a step, in one phrase: its reason when it has one (which already names the exit
/// code: `exit code 3`, `exit code 137 (OOMKilled)`), else its exit code when that says more
/// than its status.
pub fn outcome(status: Status, exit_code: Option<i32>, reason: Option<&str>) -> Option<String> {
    match (reason, exit_code) {
        (Some(r), _) if !r.is_empty() => Some(r.to_string()),
        (_, Some(code)) if code != 0 || status != Status::Success => {
            Some(format!("exit code {code}"))
        }
        _ => None,
    }
}

/// A duration as people read it: `0.4s`, `12s`, `3m04s`, `1h02m`.
pub fn duration(start: DateTime<Utc>, end: DateTime<Utc>) -> String {
    let ms = (end - start).num_milliseconds().max(0);
    let s = ms / 1000;
    if s < 10 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// The duration between two optional times: empty until it started, running until now.
fn span(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match start {
        Some(start) => duration(start, end.unwrap_or(now)),
        None => String::new(),
    }
}

/// `file:line:column` (or `file` and a JSON pointer) of a diagnostic; `file_of` maps a
/// config's name to the file it came from, when the CLI read it from one.
pub fn place(d: &Diagnostic, file_of: &dyn Fn(&str) -> Option<String>) -> String {
    let file = file_of(&d.config).unwrap_or_else(|| d.config.clone());
    match (d.line, d.column) {
        (Some(line), Some(column)) => format!("{file}:{line}:{column}"),
        _ if d.pointer.is_empty() => file,
        _ => format!("{file}:{}", d.pointer),
    }
}

/// One warning line, as `lint` and the server's `warnings` are shown.
pub fn warning(d: &Diagnostic, file_of: &dyn Fn(&str) -> Option<String>) -> String {
    format!(
        "{}: {}: {}",
        place(d, file_of),
        paint(YELLOW, "warning"),
        d.message
    )
}

/// A pipeline with its workflows and steps, one line each, with times: `piculet status`, and
/// the summary at the end of `--follow`.
pub fn status_table(pipeline: &Pipeline, now: DateTime<Utc>) -> String {
    let p = &pipeline.summary;
    let mut out = format!(
        "{} {} {:?}: {}{}{}\n",
        paint(BOLD, "pipeline"),
        p.id,
        p.name,
        status(p.status, 0),
        p.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        match span(p.started_at, p.finished_at, now) {
            s if s.is_empty() => String::new(),
            s => format!(" in {s}"),
        }
    );
    let width = pipeline
        .workflows
        .iter()
        .flat_map(|w| w.steps.iter().map(|s| s.name.len()))
        .max()
        .unwrap_or(0);
    for w in &pipeline.workflows {
        let matrix = if w.matrix.is_empty() {
            String::new()
        } else {
            format!(" {:?}", w.matrix)
        };
        out.push_str(&format!(
            "  workflow {}{matrix}: {}{}\n",
            w.name,
            status(w.status, 0),
            w.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
        for s in &w.steps {
            let kind = match s.kind {
                StepKind::Step => "",
                other => other.as_str(),
            };
            let mut line = format!(
                "    {} {} {:<width$} {:>7}  {}",
                mark(s.status),
                status(s.status, 9),
                s.name,
                span(s.started_at, s.finished_at, now),
                paint(DIM, &s.id.to_string()),
            );
            if !kind.is_empty() {
                line.push_str(&format!(" ({kind})"));
            }
            if let Some(o) = outcome(s.status, s.exit_code, s.reason.as_deref()) {
                line.push_str(&format!("  {o}"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// The header of `piculet list`.
pub fn list_header() -> String {
    paint(
        BOLD,
        &format!(
            "{:<36}  {:<9}  {:<20}  {:>7}  NAME",
            "ID", "STATUS", "CREATED", "TIME"
        ),
    )
}

/// One row of `piculet list`.
pub fn list_row(p: &PipelineSummary, now: DateTime<Utc>) -> String {
    let labels = p
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut row = format!(
        "{}  {}  {:<20}  {:>7}  {}",
        p.id,
        status(p.status, 9),
        p.created_at.format("%Y-%m-%d %H:%M:%SZ"),
        span(p.started_at, p.finished_at, now),
        p.name,
    );
    if !labels.is_empty() {
        row.push_str(&format!("  {}", paint(DIM, &labels)));
    }
    row
}

/// One line of `piculet events`.
pub fn event_line(e: &Event) -> String {
    let subject = match e.subject {
        Subject::Pipeline => "pipeline",
        Subject::Workflow => "workflow",
        Subject::Step => "step",
    };
    let mut line = format!(
        "{}  {:<8}  {}  {}",
        paint(DIM, &e.at.format("%H:%M:%S%.3f").to_string()),
        subject,
        status(e.status, 9),
        e.name
    );
    if let Some(o) = outcome(e.status, e.exit_code, e.reason.as_deref()) {
        line.push_str(&format!("  {o}"));
    }
    line
}

/// The line `--follow` prints when a step has ended: mark, name, status, duration, outcome.
pub fn step_done(
    name: &str,
    width: usize,
    status_now: Status,
    took: Option<String>,
    outcome_text: Option<String>,
) -> String {
    let mut line = format!(
        "{} {} {}",
        mark(status_now),
        paint(BOLD, &format!("{name:<width$}")),
        status(status_now, 0)
    );
    if let Some(t) = took {
        line.push_str(&format!(" in {t}"));
    }
    if let Some(o) = outcome_text {
        line.push_str(&format!(" ({o})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(at(0), at(400)), "0.4s");
        assert_eq!(duration(at(0), at(9_999)), "9.9s");
        assert_eq!(duration(at(0), at(12_300)), "12s");
        assert_eq!(duration(at(0), at(184_000)), "3m04s");
        assert_eq!(duration(at(0), at(3_720_000)), "1h02m");
        assert_eq!(duration(at(5), at(0)), "0.0s", "clock skew is not negative");
    }

    #[test]
    fn the_exit_code_is_said_once() {
        assert_eq!(
            outcome(Status::Failure, Some(3), Some("exit code 3")).as_deref(),
            Some("exit code 3")
        );
        assert_eq!(
            outcome(Status::Failure, Some(3), None).as_deref(),
            Some("exit code 3")
        );
        assert_eq!(outcome(Status::Success, Some(0), None), None);
        assert_eq!(
            outcome(Status::Error, None, Some("image pull failed")).as_deref(),
            Some("image pull failed")
        );
    }
}
