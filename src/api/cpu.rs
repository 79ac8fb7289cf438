//! The CPU-heavy part of a request — parsing a body, validating, planning, rendering —
//! runs here: on tokio's blocking threads, at most `PICULET_MAX_PLANNING` at once.
//!
//! On the async worker threads one large submission would hold up every other request of the
//! replica, the probes and the event streams included. The blocking pool has threads to spare,
//! so the number running at once is bounded here instead; a request finding every slot taken
//! waits up to `PICULET_PLANNING_QUEUE_TIMEOUT`, then is refused with 503 and `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::AppState;
use super::error::ApiError;

/// The slots for CPU-heavy work; cloned handles share them.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
    slots: usize,
    queue_timeout: Duration,
    /// Counts the requests refused for want of a slot.
    refused: metrics::Counter,
}

impl CpuPool {
    /// `slots` pieces of work at once (at least one); a request waits `queue_timeout` for one.
    pub fn new(slots: usize, queue_timeout: Duration, refused: metrics::Counter) -> CpuPool {
        let slots = slots.max(1);
        CpuPool {
            permits: Arc::new(Semaphore::new(slots)),
            slots,
            queue_timeout,
            refused,
        }
    }

    /// Runs `work` on a blocking thread once a slot is free, and returns what it returns.
    ///
    /// The slot is held until `work` returns, even when the request is gone by then: the
    /// thread cannot be stopped, and the bound is on the CPU actually in use. Waiting for a
    /// slot ends when the request is dropped.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit =
            match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed; a closed one is as good as none free.
                Ok(Err(_)) | Err(_) => {
                    self.refused.increment(1);
                    return Err(ApiError::Busy {
                        slots: self.slots,
                        waited: self.queue_timeout,
                        retry_after: self.queue_timeout.as_secs_f64().ceil().max(1.0) as u64,
                    });
                }
            };
        // Whatever the work logs belongs to the request.
        let span = tracing::Span::current();
        let done = tokio::task::spawn_blocking(move || {
            let _in_request = span.enter();
            let _slot = permit;
            work()
        })
        .await;
        done.map_err(|e| match e.try_into_panic() {
            Ok(panic) => ApiError::Fault(format!("planning panicked: {}", panic_text(&*panic))),
            Err(e) => ApiError::Fault(format!("planning did not finish: {e}")),
        })
    }
}

/// Runs CPU-heavy `work` in the server's [`CpuPool`]; what the handlers call.
pub async fn run<T, F>(state: &AppState, work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    state.cpu.run(work).await
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// On a single-threaded runtime, work that waits for the runtime to make progress would
    /// never finish if it ran on the runtime's thread.
    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_off_the_runtime() {
        let pool = CpuPool::new(1, LONG, metrics::Counter::noop());
        let (tx, rx) = mpsc::channel::<()>();
        let work = pool.run(move || rx.recv_timeout(LONG).is_ok());
        let answer = async {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        };
        let (received, ()) = tokio::join!(work, answer);
        assert!(received.unwrap(), "the work waited for the runtime in vain");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_slots_run_at_once() {
        let pool = CpuPool::new(2, LONG, metrics::Counter::noop());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pool_refuses_after_the_queue_timeout() {
        let pool = CpuPool::new(1, Duration::from_millis(50), metrics::Counter::noop());
        let (release, hold) = mpsc::channel::<()>();
        let holder = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || hold.recv_timeout(LONG)).await })
        };
        while pool.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let refused = pool.run(|| ()).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let ApiError::Busy {
            slots: 1,
            retry_after: 1,
            ..
        } = refused
        else {
            panic!("{refused:?}");
        };
        let detail = refused.to_string();
        assert!(detail.contains("PICULET_MAX_PLANNING"), "{detail}");
        assert!(detail.contains("50ms"), "{detail}");

        release.send(()).unwrap();
        holder.await.unwrap().unwrap().unwrap();
        assert_eq!(pool.run(|| 7).await.unwrap(), 7, "the slot is free again");
    }

    #[tokio::test]
    async fn a_panic_is_a_fault_and_frees_its_slot() {
        let pool = CpuPool::new(1, Duration::from_millis(500), metrics::Counter::noop());
        let failed = pool
            .run(|| -> u8 { panic!("the planner broke") })
            .await
            .unwrap_err();
        let ApiError::Fault(message) = &failed else {
            panic!("{failed:?}");
        };
        assert!(message.contains("the planner broke"), "{message}");
        assert_eq!(failed.problem().status, 500);
        assert_eq!(pool.run(|| 1).await.unwrap(), 1);
    }

    #[test]
    fn at_least_one_slot() {
        assert_eq!(
            CpuPool::new(0, LONG, metrics::Counter::noop())
                .permits
                .available_permits(),
            1
        );
    }
}
