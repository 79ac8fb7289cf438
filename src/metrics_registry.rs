//! The metrics registry of one app: `server::app` makes one, hands it to whatever counts (the
//! engine, the Kubernetes backend, the API's streams and planning slots, the feed between
//! replicas), and `GET /metrics` renders it. Nothing is installed process-wide, so two apps in
//! one process (tests, replicas) count apart and each shows exactly its own figures.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// The buckets of every histogram, in seconds: from a millisecond (a pod create's delay) to an
/// hour (a long step).
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

/// What the registry is told of where a metric comes from; the Prometheus recorder ignores it.
const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// One app's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Metrics {
            recorder: Arc::new(recorder),
            handle,
        }
    }
}

impl Metrics {
    /// The counter `name` with these labels.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// The gauge `name` with these labels.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name` with these labels.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// Everything recorded, in Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|&(label, value)| Label::new(label, value.to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registries_count_apart() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.counter("piculet_test_total", &[]).increment(2);
        a.histogram("piculet_test_seconds", &[("status", "success")])
            .record(0.002);
        b.counter("piculet_test_total", &[]).increment(1);
        let a = a.render();
        assert!(a.lines().any(|l| l == "piculet_test_total 2"), "{a}");
        assert!(
            a.lines()
                .any(|l| l == "piculet_test_seconds_bucket{status=\"success\",le=\"0.005\"} 1"),
            "{a}"
        );
        assert!(
            b.render().lines().any(|l| l == "piculet_test_total 1"),
            "{}",
            b.render()
        );
    }
}
