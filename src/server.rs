//! `piculet serve`: opens the database, applies migrations, starts the engine and serves the
//! API until SIGTERM or Ctrl-C; then stops claiming work and serving (every SSE stream ends),
//! lets running workflows go on for `PICULET_SHUTDOWN_GRACE`, hands what remains over to the
//! next replica through released leases (a second signal skips the grace), and exits.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::backend::Backend;
use crate::backend::kubernetes::KubernetesBackend;
use crate::backend::local::LocalBackend;
use crate::config::{BackendKind, Config};
use crate::engine::{Control, Engine, EngineSettings};
use crate::metrics_registry::Metrics;
use crate::secrets::SecretBox;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    #[error("{0}")]
    Backend(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything a running server is made of, before it listens; tests build it the same way.
pub struct App {
    pub router: axum::Router,
    /// The API's store.
    pub store: Store,
    /// The engine's store: the same database and live feed, through a pool of its own.
    pub engine_store: Store,
    pub engine: Engine,
    /// Cancel to shut down: the engine stops claiming and SSE streams end.
    pub shutdown: CancellationToken,
    /// The slots the API parses and plans in, shared with the router.
    pub cpu: api::cpu::CpuPool,
}

async fn backend(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Backend>, ServeError> {
    match config.backend {
        BackendKind::Local => Ok(Arc::new(LocalBackend::new(config.data_dir.clone()))),
        BackendKind::Kubernetes => {
            let create_delay = metrics.histogram("piculet_k8s_pod_create_delay_seconds", &[]);
            let backend = KubernetesBackend::connect(config.kubernetes.clone(), create_delay)
                .await
                .map_err(ServeError::Backend)?;
            Ok(Arc::new(backend))
        }
    }
}

pub async fn app(config: Config) -> Result<App, ServeError> {
    // The app's own registry; the metrics that change rarely are shown from the start.
    let metrics = Metrics::default();
    metrics.gauge("piculet_sse_clients", &[]).increment(0.0);
    metrics
        .counter("piculet_lease_takeovers_total", &[])
        .increment(0);
    metrics
        .counter("piculet_step_attempts_interrupted_total", &[])
        .increment(0);
    let feed_reconnects = metrics.counter("piculet_feed_reconnects_total", &[]);
    feed_reconnects.increment(0);
    let backend = backend(&config, &metrics).await?;
    let store = Store::connect_with(&config.database_url, config.db_api).await?;
    store.migrate().await?;
    // The engine's own connections: API requests that fill their pool cannot hold up lease
    // renewals and log writes.
    let engine_store = store
        .with_own_pool(&config.database_url, config.db_engine)
        .await?;
    let secret_box = SecretBox::from_config(config.secret_key, &config.data_dir)?;
    let control = Arc::new(Control::default());
    let shutdown = CancellationToken::new();
    // Wake-ups for this replica's followers from what other replicas store (Postgres only);
    // the task ends at shutdown.
    let _feed = store.listen_to_feed(
        &config.database_url,
        config.feed_heartbeat,
        feed_reconnects,
        shutdown.clone(),
    );
    let engine = Engine::new(
        engine_store.clone(),
        backend.clone(),
        secret_box.clone(),
        EngineSettings {
            max_workflows: config.max_workflows,
            lease: config.lease,
            max_timeout: config.max_timeout,
            grace: config.grace_period,
            max_log_bytes: config.max_log_size,
            poll: std::time::Duration::from_secs(1),
            max_attempts: config.max_attempts,
            shutdown_grace: config.shutdown_grace,
        },
        control.clone(),
        metrics.clone(),
    );
    let state = AppState::new(
        store.clone(),
        backend,
        Arc::new(config),
        secret_box,
        control,
        shutdown.clone(),
        metrics,
    );
    Ok(App {
        cpu: state.cpu.clone(),
        router: api::router(state),
        store,
        engine_store,
        engine,
        shutdown,
    })
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
    let addr = config.listen;
    let App {
        router,
        store,
        engine_store,
        engine,
        shutdown,
        ..
    } = app(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(
        address = %local,
        database = if store.is_postgres() { "postgres" } else { "sqlite" },
        "piculet is listening on http://{local}/api/v1 (API page: http://{local}/api/v1/docs)"
    );
    let hand_over = engine.hand_over();
    let engine = tokio::spawn(engine.run(shutdown.clone()));
    // The first signal stops claiming and serving; the second hands the running workflows
    // over without waiting out the grace.
    let signals = tokio::spawn({
        let shutdown = shutdown.clone();
        let mut signals = Signals::new();
        async move {
            signals.next().await;
            tracing::info!(
                "shutting down: no new work is claimed; running workflows go on for the shutdown grace, then they are handed over (a second signal hands them over now)"
            );
            shutdown.cancel();
            signals.next().await;
            tracing::info!("second signal: handing the running workflows over now");
            hand_over.cancel();
        }
    });
    crate::http::serve(listener, router, {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    })
    .await;
    shutdown.cancel();
    let _ = engine.await;
    signals.abort();
    store.close().await;
    engine_store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and Ctrl-C, registered once so that a second signal is never missed between two
/// waits.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGTERM or Ctrl-C.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn on(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = on(&mut self.terminate) => {},
                () = on(&mut self.interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
