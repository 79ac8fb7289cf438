//! The pipeline format: Woodpecker-style pipeline files (YAML or JSON) read into a
//! position-annotated tree, checked key by key, expanded over the matrix, substituted, and
//! planned into workflows with a DAG of steps. Pure code: no I/O, no async, no database; the
//! same code serves `POST /lint`, `POST /render`, submission and the CLI.
//!
//! Entry points: [`lint`] and [`plan`]. Every problem is a [`Diagnostic`] with a JSON pointer
//! and, for text, line and column; all of them are reported at once.

pub mod diagnostic;
pub mod duration;
pub(crate) mod graph;
pub mod limits;
pub(crate) mod matrix;
pub mod model;
pub mod node;
pub(crate) mod paths;
pub mod plan;
pub mod quantity;
pub mod schema;
pub mod script;
pub mod subst;
pub mod text;
pub(crate) mod validate;
pub(crate) mod when;

pub use diagnostic::{Diagnostic, Report};
pub use limits::Limits;
pub use model::{
    Capabilities, Conclusion, EnvValue, Failure, KubernetesOptions, Resources, SecProfile,
    SecretRef, SecretTarget, SecurityContext, SettingValue, StepKind, Toleration, Workspace,
};
pub use plan::{
    Concurrency, Context, DEFAULT_CLONE_IMAGE, DroppedStep, DroppedWorkflow, Plan, Planned,
    RepoSpec, Source, SourceContent, StepSpec, WorkflowPlan, lint, plan,
};
