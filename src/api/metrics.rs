//! `GET /metrics`: Prometheus text format.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::store::ConcurrencyCounts;

/// The label value of the groups `/metrics` sums instead of showing them one by one.
pub const OTHER_GROUPS: &str = "(other)";

/// Metrics in Prometheus text format: workflows queued and running, per concurrency group the
/// workflows running and waiting, step durations by status, submit-to-start latency, log lines
/// and bytes stored, SSE clients, lease takeovers.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = "operations",
    operation_id = "get_metrics",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong token", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.store.workflow_counts().await?;
    for (status, n) in counts {
        state
            .metrics
            .gauge("piculet_workflows", &[("status", status.as_str())])
            .set(n as f64);
    }
    let groups = state
        .store
        .concurrency_counts(state.config.metrics_concurrency_groups)
        .await?;
    let mut text = state.metrics.render();
    render_concurrency(&mut text, &groups);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Appends `piculet_concurrency_running` and `piculet_concurrency_waiting`, read from the
/// database at each scrape across replicas. Written here rather than through the recorder:
/// a group whose workflows have all ended must disappear, not stay behind at 0, so that the
/// series in a scrape are bounded by `PICULET_METRICS_CONCURRENCY_GROUPS`.
fn render_concurrency(text: &mut String, counts: &ConcurrencyCounts) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // A group a submission names "(other)" in a repository "(other)" is summed with the
    // others: shown beside them it would be a second series of the same labels, which a
    // scraper drops or refuses.
    let (forged, shown): (Vec<_>, Vec<_>) = counts
        .groups
        .iter()
        .partition(|g| g.scope == OTHER_GROUPS && g.group == OTHER_GROUPS);
    let others = forged
        .iter()
        .map(|g| (g.running, g.waiting))
        .chain(counts.others)
        .reduce(|a, b| (a.0 + b.0, a.1 + b.1));
    let groups = shown
        .iter()
        .map(|g| (g.scope.as_str(), g.group.as_str(), g.running, g.waiting));
    let others = others.map(|(running, waiting)| (OTHER_GROUPS, OTHER_GROUPS, running, waiting));
    let series: Vec<(&str, &str, i64, i64)> = groups.chain(others).collect();
    gauge(
        text,
        "piculet_concurrency_running",
        "Workflows of a concurrency group running, across replicas.",
        series.iter().map(|s| (s.0, s.1, s.2)),
    );
    gauge(
        text,
        "piculet_concurrency_waiting",
        "Workflows of a concurrency group ready to run and waiting for it, across replicas.",
        series.iter().map(|s| (s.0, s.1, s.3)),
    );
}

/// One gauge with its series, labelled by repository and group.
fn gauge<'a>(
    text: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, &'a str, i64)>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} gauge");
    for (repo, group, value) in series {
        let _ = writeln!(
            text,
            "{name}{{repo=\"{}\",group=\"{}\"}} {value}",
            escape_label(repo),
            escape_label(group),
        );
    }
}

/// A label value as the Prometheus text format writes it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::GroupCount;

    /// A submission can name its repository and group "(other)": it must not forge a second
    /// series of the others' labels.
    #[test]
    fn a_group_named_like_the_others_is_summed_with_them() {
        let group = |scope: &str, group: &str, running, waiting| GroupCount {
            scope: scope.into(),
            group: group.into(),
            running,
            waiting,
        };
        let counts = ConcurrencyCounts {
            groups: vec![
                group(OTHER_GROUPS, OTHER_GROUPS, 1, 2),
                group("acme/api", "deploy", 1, 0),
            ],
            others: Some((3, 4)),
        };
        let mut text = String::new();
        render_concurrency(&mut text, &counts);
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [
                "piculet_concurrency_running{repo=\"acme/api\",group=\"deploy\"} 1",
                "piculet_concurrency_running{repo=\"(other)\",group=\"(other)\"} 4",
                "piculet_concurrency_waiting{repo=\"acme/api\",group=\"deploy\"} 0",
                "piculet_concurrency_waiting{repo=\"(other)\",group=\"(other)\"} 6",
            ]
        );
        // Alone, it is shown under the same labels, once.
        let counts = ConcurrencyCounts {
            groups: vec![group(OTHER_GROUPS, OTHER_GROUPS, 1, 2)],
            others: None,
        };
        let mut text = String::new();
        render_concurrency(&mut text, &counts);
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [
                "piculet_concurrency_running{repo=\"(other)\",group=\"(other)\"} 1",
                "piculet_concurrency_waiting{repo=\"(other)\",group=\"(other)\"} 2",
            ]
        );
    }

    #[test]
    fn groups_are_rendered_with_their_repository_and_the_rest_summed() {
        let counts = ConcurrencyCounts {
            groups: vec![
                GroupCount {
                    scope: "acme/api".into(),
                    group: "deploy".into(),
                    running: 1,
                    waiting: 3,
                },
                GroupCount {
                    scope: String::new(),
                    group: "say \"hi\"\\\n".into(),
                    running: 0,
                    waiting: 1,
                },
            ],
            others: Some((2, 5)),
        };
        let mut text = "piculet_workflows{status=\"queued\"} 4".to_string();
        render_concurrency(&mut text, &counts);
        assert_eq!(
            text,
            "piculet_workflows{status=\"queued\"} 4\n\
             # HELP piculet_concurrency_running Workflows of a concurrency group running, across replicas.\n\
             # TYPE piculet_concurrency_running gauge\n\
             piculet_concurrency_running{repo=\"acme/api\",group=\"deploy\"} 1\n\
             piculet_concurrency_running{repo=\"\",group=\"say \\\"hi\\\"\\\\\\n\"} 0\n\
             piculet_concurrency_running{repo=\"(other)\",group=\"(other)\"} 2\n\
             # HELP piculet_concurrency_waiting Workflows of a concurrency group ready to run and waiting for it, across replicas.\n\
             # TYPE piculet_concurrency_waiting gauge\n\
             piculet_concurrency_waiting{repo=\"acme/api\",group=\"deploy\"} 3\n\
             piculet_concurrency_waiting{repo=\"\",group=\"say \\\"hi\\\"\\\\\\n\"} 1\n\
             piculet_concurrency_waiting{repo=\"(other)\",group=\"(other)\"} 5\n"
        );
    }
}
