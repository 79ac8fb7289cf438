//! The integration tests, as one binary: one link instead of one per file, and one process
//! whose shared state each test must not depend on. Nothing global is left to share: each app
//! renders its own metrics registry, and no test sets environment variables, the current
//! directory or a tracing subscriber for the process (child processes get theirs).
//!
//! `common` is the harness (a real server on a real socket, over a fresh database of either
//! kind); `k8s_common` the helpers of the tests that hold the fake Kubernetes API server
//! (`piculet-fake-k8s`) to the recordings of `tests/k8s-wire`.

// First, so that `on_both_databases!` is in scope in the modules after it.
#[macro_use]
mod common;
mod k8s_common;

mod api;
mod attempts;
mod chaos;
mod chaos_k8s;
mod cli;
mod concurrency;
mod connections;
mod engine;
mod hostile;
mod k8s_backend;
mod k8s_fake_cluster;
mod k8s_fake_conformance;
mod openapi;
mod replicas;
