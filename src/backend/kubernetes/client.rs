//! The connection to the API server: kube-rs from in-cluster configuration or a kubeconfig, a
//! client-side rate limiter every request of the backend passes, a slower pace for pod
//! creation, and retries with back-off for answers that may succeed later (429, 5xx, a broken
//! connection).

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::k8s::KubernetesConfig;

/// A kube client with the administrator's rate limits.
#[derive(Clone)]
pub struct Kube {
    pub client: kube::Client,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// Pod creation takes half the rate and half the burst, so that a wave of new workflows
    /// cannot starve the log reads and deletes of running ones.
    creates: Arc<DefaultDirectRateLimiter>,
}

fn limiter(qps: f32, burst: u32) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / f64::from(qps.max(0.001)));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

impl Kube {
    pub fn new(client: kube::Client, qps: f32, burst: u32) -> Kube {
        Kube {
            client,
            limiter: Arc::new(limiter(qps, burst)),
            creates: Arc::new(limiter(qps / 2.0, burst / 2)),
        }
    }

    /// Connects as configured: an explicit kubeconfig file and context, else `KUBECONFIG` or
    /// `~/.kube/config` (with the context when one is named), else the in-cluster service
    /// account.
    pub async fn connect(config: &KubernetesConfig) -> Result<Kube, String> {
        let options = KubeConfigOptions {
            context: config.context.clone(),
            ..KubeConfigOptions::default()
        };
        let kube_config = match &config.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    format!(
                        "--k8s-kubeconfig (PICULET_K8S_KUBECONFIG): cannot read {}: {e}",
                        path.display()
                    )
                })?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| {
                        format!(
                            "--k8s-kubeconfig (PICULET_K8S_KUBECONFIG): {} is unusable: {e}",
                            path.display()
                        )
                    })?
            }
            None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("--k8s-context (PICULET_K8S_CONTEXT): {e}"))?,
            None => kube::Config::infer().await.map_err(|e| {
                format!(
                    "--backend (PICULET_BACKEND): no Kubernetes configuration found ({e}); run \
                     in a cluster, set KUBECONFIG, or set PICULET_K8S_KUBECONFIG"
                )
            })?,
        };
        let client = kube::Client::try_from(kube_config)
            .map_err(|e| format!("--backend (PICULET_BACKEND): cannot build a client: {e}"))?;
        Ok(Kube::new(client, config.qps, config.burst))
    }

    /// Runs one API call through the rate limiter, retrying what may succeed later.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let f = &f;
        let limiter = &self.limiter;
        // The request is made once the limiter lets it through.
        let attempt = move || async move {
            limiter.until_ready().await;
            f().await
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(6)
                    .with_jitter(),
            )
            .when(retriable)
            .notify(|e, wait| tracing::debug!(error = %e, ?wait, "Kubernetes API call failed; retrying"))
            .await
    }

    /// One API call through the rate limiter, without retries: for a caller that retries on
    /// its own terms (a log stream resumed through a kubelet restart).
    pub async fn call_once<T, Fut>(&self, f: impl FnOnce() -> Fut) -> Result<T, kube::Error>
    where
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.limiter.until_ready().await;
        f().await
    }

    /// [`Kube::call`] for a pod create: also paced by the creation limiter.
    pub async fn create_pod<T, F, Fut>(&self, f: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.creates.until_ready().await;
        self.call(f).await
    }
}

/// Whether an error may go away by itself: throttling, a server error, a broken connection.
pub fn retriable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || (s.code >= 500 && s.code != 501),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API error in one line: the server's message where there is one.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => {
            format!("{} ({} {})", s.message, s.code, s.reason)
        }
        other => other.to_string(),
    }
}
