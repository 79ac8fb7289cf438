//! `piculet serve`: opens the database, applies migrations and serves the API until SIGTERM
//! or Ctrl-C.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::secrets::SecretBox;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything a running server is made of, before it listens; tests build it the same way.
pub async fn app(config: Config) -> Result<(axum::Router, Store), ServeError> {
    let store = Store::connect(&config.database_url).await?;
    store.migrate().await?;
    let secret_box = SecretBox::from_config(config.secret_key, &config.data_dir)?;
    let state = AppState::new(store.clone(), Arc::new(config), secret_box);
    Ok((api::router(state), store))
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
    let addr = config.listen;
    let (router, store) = app(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(
        address = %local,
        database = if store.is_postgres() { "postgres" } else { "sqlite" },
        "piculet is listening on http://{local}/api/v1 (API page: http://{local}/api/v1/docs)"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(ServeError::Serve)?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
