//! Whether piculet can work in its namespace: the API server answers, and a
//! SelfSubjectAccessReview grants every verb the backend uses. `/readyz` reports the answer,
//! naming each missing permission; `deploy/role.yaml` grants exactly [`REQUIRED`].

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::client::{Kube, describe};

/// Every permission the backend uses, as (verb, resource, subresource).
pub const REQUIRED: &[(&str, &str, &str)] = &[
    ("create", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("delete", "pods", ""),
    ("deletecollection", "pods", ""),
    ("get", "pods", "log"),
    ("create", "persistentvolumeclaims", ""),
    ("get", "persistentvolumeclaims", ""),
    ("list", "persistentvolumeclaims", ""),
    ("delete", "persistentvolumeclaims", ""),
    ("create", "secrets", ""),
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("delete", "secrets", ""),
    ("create", "services", ""),
    ("get", "services", ""),
    ("list", "services", ""),
    ("delete", "services", ""),
];

/// How long an answer is reused: probes come every few seconds, permissions change rarely.
const FRESH: Duration = Duration::from_secs(30);

/// The last answer, reused while fresh.
#[derive(Default)]
pub struct AccessCache {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl AccessCache {
    pub async fn check(&self, kube: &Kube, namespace: &str) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < FRESH
        {
            return answer.clone();
        }
        let answer = check(kube, namespace).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// `verb resource[/subresource]`, as `kubectl auth can-i` writes it.
fn permission(verb: &str, resource: &str, subresource: &str) -> String {
    if subresource.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}/{subresource}")
    }
}

/// How long a probe may wait for the API server.
const PATIENCE: Duration = Duration::from_secs(3);

/// Asks the API server directly, past the rate limiter: a probe must not wait behind a wave of
/// pod creations, and it asks all its questions at once.
async fn check(kube: &Kube, namespace: &str) -> Result<(), String> {
    let client = &kube.client;
    match tokio::time::timeout(PATIENCE, client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(format!(
                "the Kubernetes API does not answer: {}",
                describe(&e)
            ));
        }
        Err(_) => {
            return Err(format!(
                "the Kubernetes API does not answer within {}s",
                PATIENCE.as_secs()
            ));
        }
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let post = PostParams::default();
    let asked = REQUIRED.iter().map(|(verb, resource, subresource)| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(verb.to_string()),
                    resource: Some(resource.to_string()),
                    subresource: (!subresource.is_empty()).then(|| subresource.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let reviews = &reviews;
        let post = &post;
        async move {
            let answer = reviews.create(post, &review).await?;
            Ok::<_, kube::Error>((
                permission(verb, resource, subresource),
                answer.status.is_some_and(|s| s.allowed),
            ))
        }
    });
    let answers = tokio::time::timeout(PATIENCE, futures::future::join_all(asked))
        .await
        .map_err(|_| {
            format!(
                "cannot check permissions (SelfSubjectAccessReview): no answer within {}s",
                PATIENCE.as_secs()
            )
        })?;
    let mut missing = Vec::new();
    for answer in answers {
        let (permission, allowed) = answer.map_err(|e| {
            format!(
                "cannot check permissions (SelfSubjectAccessReview): {}",
                describe(&e)
            )
        })?;
        if !allowed {
            missing.push(permission);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "piculet lacks permissions in namespace {namespace}: {}; grant them with a Role \
             such as deploy/role.yaml",
            missing.join(", ")
        ))
    }
}
