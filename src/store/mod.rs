//! Storage of pipelines, workflows, steps, log lines and events, in Postgres (production) or
//! SQLite (the embedded default).
//!
//! One [`Store`] type serves both databases. The SQL is written once: it is plain
//! `$1 … RETURNING` SQL that both accept, and [`on_pool!`] expands each query for both pool
//! types, so the two cannot drift apart. The one shared conformance suite (`tests/api.rs`)
//! runs against both.

mod engine;
mod events;
mod logs;
mod pipelines;

pub use engine::{ClaimedWorkflow, LeaseState, StepState};
pub use events::NewEvent;
pub use pipelines::{
    Created, ListFilter, NewPipeline, NewStep, NewWorkflow, insert_pipeline_postgres,
};

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::config::{DatabaseUrl, redact_url};
use crate::hub::Hub;
use crate::model::Event;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot create the directory of the SQLite database {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is not what this version of piculet expects: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool, once per database type.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Postgres($pool) => $body,
            $crate::store::Pool::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// A handle on the database; cheap to clone. Whatever it stores that followers may want
/// (log lines, events) it publishes to its [`Hub`] once committed.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    hub: Hub,
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) when it does not exist yet.
    pub async fn connect(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let pool = match url {
            DatabaseUrl::Postgres(text) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(text)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: redact_url(text),
                        source,
                    })?,
            ),
            DatabaseUrl::Sqlite(text) => {
                let connect_error = |source| StoreError::Connect {
                    url: text.clone(),
                    source,
                };
                let options = SqliteConnectOptions::from_str(text)
                    .map_err(connect_error)?
                    .create_if_missing(true)
                    .foreign_keys(true)
                    // WAL lets readers (API, SSE) go on while the engine writes.
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(8)
                        .connect_with(options)
                        .await
                        .map_err(connect_error)?,
                )
            }
        };
        Ok(Store {
            pool,
            hub: Hub::default(),
        })
    }

    /// Applies every migration not applied yet; safe to run on every start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
            Pool::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// The live feed of what this store commits.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Publishes events committed by the caller's transaction.
    fn publish(&self, events: Vec<Event>) {
        for event in events {
            self.hub.publish_event(event);
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}
