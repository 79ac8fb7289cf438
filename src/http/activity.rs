//! Whether a hyper connection is in use: the requests in progress on it (an answer is in
//! progress until its body has been sent or dropped, so an event stream keeps its connection
//! in use for as long as it is followed), and how many have begun. A connection on which
//! nothing has been in progress for a whole period is idle, and is closed; hyper's HTTP/1 head
//! timeout does that for HTTP/1 only, and HTTP/2 has no such timeout of its own.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tower::ServiceExt as _;

/// The requests of one connection.
#[derive(Default)]
pub struct Activity {
    in_progress: AtomicUsize,
    begun: AtomicU64,
}

impl Activity {
    /// A request begins; it ends when the guard is dropped.
    fn begin(self: &Arc<Self>) -> InProgress {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(self.clone())
    }

    /// Whether nothing is in progress and nothing has begun since `begun` was read.
    fn idle_since(&self, begun: u64) -> bool {
        self.in_progress.load(Ordering::Relaxed) == 0 && self.begun.load(Ordering::Relaxed) == begun
    }

    /// Checks every `period` whether the connection was idle for the whole period.
    pub fn idle_checks(self: &Arc<Self>, period: Duration) -> IdleChecks {
        IdleChecks {
            activity: self.clone(),
            period,
        }
    }
}

/// See [`Activity::idle_checks`].
pub struct IdleChecks {
    activity: Arc<Activity>,
    period: Duration,
}

impl IdleChecks {
    /// Completes once a whole period has passed with nothing in progress and nothing begun.
    pub async fn idle(&mut self) {
        loop {
            let begun = self.activity.begun.load(Ordering::Relaxed);
            let was_idle = self.activity.in_progress.load(Ordering::Relaxed) == 0;
            tokio::time::sleep(self.period).await;
            if was_idle && self.activity.idle_since(begun) {
                return;
            }
        }
    }
}

/// A request in progress.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router, as one connection calls it: each request counted in its [`Activity`] until
/// its answer's body is done.
#[derive(Clone)]
pub struct Tracked {
    router: axum::Router,
    activity: Arc<Activity>,
}

impl Tracked {
    pub fn new(router: axum::Router, activity: Arc<Activity>) -> Tracked {
        Tracked { router, activity }
    }
}

impl tower::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let in_progress = self.activity.begin();
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request.map(Body::new)).await?;
            // The guard lives as long as the body: dropped when it is sent, or abandoned.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_progress;
                    frame
                }))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_a_whole_period_without_requests() {
        let activity = Arc::new(Activity::default());
        let mut checks = activity.idle_checks(Duration::from_secs(30));

        // A request in progress for longer than a period keeps the connection.
        let request = activity.begin();
        let idle = tokio::time::timeout(Duration::from_secs(90), checks.idle()).await;
        assert!(idle.is_err(), "in use while a request is in progress");
        drop(request);

        // A request that began and ended within the period counts as use.
        let mut checks = activity.idle_checks(Duration::from_secs(30));
        let watched = tokio::spawn(async move {
            checks.idle().await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(activity.begin());
        let started = tokio::time::Instant::now();
        let idle_at = watched.await.unwrap();
        // Checked at 30 s (used at 10 s), 60 s (a whole period unused): idle at 60 s.
        assert_eq!(idle_at - started, Duration::from_secs(50));
    }
}
