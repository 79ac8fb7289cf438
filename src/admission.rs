//! Admission: whether a submission may run on this server, decided before anything is stored.
//! A submission is admitted when it passes its own checks and plans, and, with the Kubernetes
//! backend, when every object it renders to passes the administrator's policy and the API
//! server's validation (through the [dry run](crate::dry_run)). Submitting, retrying,
//! `POST /lint` and `piculet lint` ask the same questions.

use crate::config::{BackendKind, Config};
use crate::dry_run::{self, Refusal};
use crate::k8s::KubernetesConfig;
use crate::pipeline::{Limits, Report};
use crate::secrets::SecretBox;
use crate::store::NewPipeline;
use crate::submission::Submission;

/// What a submission is admitted by.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// The platform of workflows that name none.
    pub platform: &'a str,
    pub limits: &'a Limits,
    /// With the Kubernetes backend, its settings and policy: every object a submission renders
    /// to must pass them and the API server's validation.
    pub kubernetes: Option<&'a KubernetesConfig>,
}

impl<'a> Rules<'a> {
    /// The rules of a server: the Kubernetes ones only when it runs the Kubernetes backend.
    pub fn of(config: &'a Config) -> Rules<'a> {
        Rules {
            platform: &config.platform,
            limits: &config.limits,
            kubernetes: (config.backend == BackendKind::Kubernetes).then_some(&config.kubernetes),
        }
    }
}

/// Admits a submission: the pipeline to store, or why it may not run, with every error at once.
pub fn admit(
    submission: &Submission,
    rules: &Rules<'_>,
    secret_box: &SecretBox,
) -> Result<NewPipeline, Refusal> {
    if let Some(kubernetes) = rules.kubernetes {
        dry_run::render(submission, rules.platform, rules.limits, kubernetes)?;
    }
    submission
        .prepare(rules.platform, rules.limits, secret_box)
        .map_err(Refusal::Invalid)
}

/// What `POST /lint` and `piculet lint` report: the submission's own errors and warnings, and
/// with the Kubernetes rules what the dry run refuses — the policy's and the API server's
/// rules — as errors at their places.
pub fn lint(submission: &Submission, rules: &Rules<'_>) -> Report {
    let mut report = submission.lint(rules.platform, rules.limits);
    let Some(config) = rules.kubernetes.filter(|_| report.errors.is_empty()) else {
        return report;
    };
    match dry_run::render(submission, rules.platform, rules.limits, config) {
        Ok(_) => {}
        Err(Refusal::Invalid(r)) => report.errors.extend(r.errors),
        Err(Refusal::Policy(v) | Refusal::Kubernetes(v)) => {
            report.errors.extend(v.into_iter().map(dry_run::diagnostic));
        }
    }
    report
}
