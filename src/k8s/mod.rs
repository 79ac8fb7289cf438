//! The Kubernetes rendering and policy of piculet: a planned workflow becomes the exact objects
//! the Kubernetes backend creates — a workspace PVC, Secrets, a headless Service and one pod per
//! step and service — under the administrator's settings and policy. Pure code: no I/O, no
//! clock, no randomness; the backend sends what [`render_workflow`] returns, and `POST /render`
//! shows it.
//!
//! - [`settings`]: every `PICULET_K8S_*` setting, read and checked into [`KubernetesConfig`];
//! - [`render`]: [`render_workflow`], its input and output, the owner-reference anchor;
//! - [`pod`], [`security`], [`resources`], [`volume`], [`secret`], [`service`]: one kind of
//!   object or concern each;
//! - [`policy`]: [`PolicyViolation`] and the allow rules;
//! - [`names`], [`labels`]: object names and labels;
//! - [`pss`]: a Pod Security Standards checker the tests hold every rendered pod to;
//! - [`validation`]: the API server's own validation, which every rendered object must pass;
//! - [`trace`]: where a field of a rendered object came from in the submission;
//! - [`quantity`]: comparable resource quantities.

pub mod labels;
pub mod names;
pub mod pod;
pub mod policy;
pub mod pss;
pub mod quantity;
pub mod render;
pub mod resources;
pub mod secret;
pub mod security;
pub mod service;
pub mod settings;
pub mod trace;
pub mod validation;
pub mod volume;

#[cfg(test)]
mod tests;

pub use policy::PolicyViolation;
pub use render::{Refused, RenderInput, RenderedPod, RenderedWorkflow, render_workflow};
pub use settings::{KubernetesConfig, KubernetesSettings, PodSecurity, SettingError, StepField};
