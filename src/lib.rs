//! piculet: a pipeline-execution service. A submitted Woodpecker-style pipeline is validated
//! and planned ([`pipeline`]), stored ([`store`]) and served over REST ([`api`]).

pub mod admission;
pub mod api;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub mod dry_run;
pub mod engine;
pub mod http;
pub mod hub;
pub mod k8s;
pub mod metrics_registry;
pub mod model;
pub mod pipeline;
pub mod repo;
pub mod run;
pub mod secrets;
pub mod server;
pub mod store;
pub mod submission;
pub mod telemetry;
#[cfg(test)]
mod woodpecker_compat;
#[cfg(test)]
mod work;
