//! Storage of pipelines, workflows, steps, log lines and events, in Postgres (production) or
//! SQLite (the embedded default).
//!
//! One [`Store`] type serves both databases. The SQL is written once: it is plain
//! `$1 … RETURNING` SQL that both accept, and [`on_pool!`] expands each query for both pool
//! types, so the two cannot drift apart. The one shared conformance suite (`tests/it/api.rs`)
//! runs against both.
//!
//! Every operation has a time limit by its class ([`QueryClass`]): the client gives up at the
//! deadline, and the database stops the statement there too (Postgres `statement_timeout`,
//! SQLite's progress handler), so that a statement whose caller is gone does not keep running
//! and holding its connection. A server runs two stores on two pools, one for the API and one
//! for the engine ([`Store::with_own_pool`]): API readers that fill their pool cannot take the
//! connections the engine renews its leases and writes its logs with.

mod engine;
mod events;
mod logs;
mod notify;
mod pipelines;

pub use engine::{
    ClaimedWorkflow, ConcurrencyCounts, GroupCount, LeaseState, StartRecord, StepState,
};
pub use events::NewEvent;
pub use logs::Fenced;
pub use notify::{APPLICATION_NAME as FEED_LISTENER_NAME, CHANNEL as FEED_CHANNEL};
pub use pipelines::{
    Created, ListFilter, NewPipeline, NewStep, NewWorkflow, PipelineList, insert_pipeline_postgres,
};

use std::future::Future;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
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
    /// The database did not answer in time: a statement ran past its class's limit, no
    /// connection came free, or (SQLite) the database stayed locked. Transient: the same
    /// request may succeed once the load is gone.
    #[error(
        "the database did not answer within {} ({}); it is busy, try again shortly",
        humantime::format_duration(*.limit),
        .class.setting()
    )]
    TimedOut { class: QueryClass, limit: Duration },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is not what this version of piculet expects: {0}")]
    Corrupt(String),
}

/// What an operation does, which sets how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryClass {
    /// Reads: lists, gets, log and event pages, probes.
    Read,
    /// Writes: submissions, cancels, and everything the engine records.
    Write,
}

impl QueryClass {
    /// The setting that holds this class's limit.
    pub fn setting(self) -> &'static str {
        match self {
            QueryClass::Read => "PICULET_DB_READ_TIMEOUT",
            QueryClass::Write => "PICULET_DB_WRITE_TIMEOUT",
        }
    }
}

/// How long each class of operation may take, from asking for a connection to the last row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub read: Duration,
    pub write: Duration,
}

/// The defaults of `PICULET_DB_READ_TIMEOUT` and `PICULET_DB_WRITE_TIMEOUT`, for a store
/// connected without settings; `config`'s tests hold them to the declared ones.
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            read: Duration::from_secs(5),
            write: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The limit of an operation of this class.
    pub fn of(&self, class: QueryClass) -> Duration {
        match class {
            QueryClass::Read => self.read,
            QueryClass::Write => self.write,
        }
    }

    /// What bounds a connection used outside any operation (the pool's first connection).
    fn longest(&self) -> Duration {
        self.read.max(self.write)
    }
}

/// One pool: how many connections it may hold, and the limits of the operations run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub connections: u32,
    pub timeouts: Timeouts,
}

tokio::task_local! {
    /// When the store operation running in this task must end: a connection handed to it
    /// stops its statements then. `None`: no limit (migrations).
    static DEADLINE: Option<Instant>;
}

/// The deadline connections handed out now must honour: the running operation's, or, outside
/// any operation, `fallback` from now.
fn connection_deadline(fallback: Duration) -> Option<Instant> {
    DEADLINE
        .try_with(|deadline| *deadline)
        .unwrap_or_else(|_| Some(Instant::now() + fallback))
}

/// Whether a database error means "not in time": a statement timeout, a pool that had no
/// connection free, a SQLite statement interrupted at its deadline or a lock held too long.
fn is_timeout(e: &sqlx::Error, postgres: bool) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|code| is_timeout_code(&code, postgres)),
        _ => false,
    }
}

/// Whether a database's error code says an operation ran out of time.
fn is_timeout_code(code: &str, postgres: bool) -> bool {
    if postgres {
        // query_canceled: statement_timeout (or an administrator's cancel).
        code == "57014"
    } else {
        // SQLITE_BUSY and SQLITE_INTERRUPT, with their extended codes.
        code.parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 9))
    }
}

/// Postgres ends each statement of the connection's current holder at its deadline. Set on
/// every hand-out, this round trip also proves the connection alive, in place of sqlx's ping.
async fn set_statement_timeout(
    conn: &mut PgConnection,
    fallback: Duration,
) -> Result<(), sqlx::Error> {
    // 0 turns the timeout off, so a deadline already passed still gets 1 ms.
    let ms = connection_deadline(fallback).map_or(0, |at| {
        at.saturating_duration_since(Instant::now())
            .as_millis()
            .max(1)
    });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET statement_timeout = {ms}")))
        .execute(conn)
        .await?;
    Ok(())
}

/// How many SQLite virtual-machine instructions run between two looks at the clock.
const SQLITE_PROGRESS_OPS: i32 = 10_000;

/// SQLite has no statement timeout: a progress handler interrupts the connection's statements
/// once its current holder's deadline has passed, even when the holder has stopped waiting;
/// and waiting for another writer's lock (which the handler cannot cut short) ends there too.
async fn stop_sqlite_at_deadline(
    conn: &mut SqliteConnection,
    fallback: Duration,
) -> Result<(), sqlx::Error> {
    let deadline = connection_deadline(fallback);
    let mut handle = conn.lock_handle().await?;
    match deadline {
        Some(at) => handle.set_progress_handler(SQLITE_PROGRESS_OPS, move || Instant::now() < at),
        None => handle.remove_progress_handler(),
    }
    drop(handle);
    // 0 would not wait at all: a deadline already passed still gets 1 ms.
    let busy = deadline.map_or(fallback, |at| at.saturating_duration_since(Instant::now()));
    let ms = busy.as_millis().max(1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {ms}")))
        .execute(conn)
        .await?;
    Ok(())
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
    timeouts: Timeouts,
    /// How far this host's clock is taken to be off (zero but in tests; see
    /// [`Store::with_clock_offset`]).
    clock_offset: chrono::Duration,
}

impl Store {
    /// Connects with one connection and the default limits: what `piculet migrate` needs.
    pub async fn connect(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let settings = PoolSettings {
            connections: 1,
            timeouts: Timeouts::default(),
        };
        Store::connect_with(url, settings).await
    }

    /// Connects, creating the SQLite file (and its directory) when it does not exist yet.
    pub async fn connect_with(
        url: &DatabaseUrl,
        settings: PoolSettings,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            pool: open_pool(url, settings).await?,
            hub: Hub::default(),
            timeouts: settings.timeouts,
            clock_offset: chrono::Duration::zero(),
        })
    }

    /// Another handle on the same database, with a pool of its own, that publishes to the same
    /// live feed: what it stores reaches the followers of this one.
    pub async fn with_own_pool(
        &self,
        url: &DatabaseUrl,
        settings: PoolSettings,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            pool: open_pool(url, settings).await?,
            hub: self.hub.clone(),
            timeouts: settings.timeouts,
            clock_offset: self.clock_offset,
        })
    }

    /// This handle as a replica on a host whose clock is `offset` off would use it. Tests use
    /// it to show that leases do not depend on replicas' clocks (see [`Store::lease_now`]).
    #[doc(hidden)]
    pub fn with_clock_offset(mut self, offset: chrono::Duration) -> Store {
        self.clock_offset = offset;
        self
    }

    /// The time by this host's clock.
    pub(crate) fn local_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.clock_offset
    }

    /// Applies every migration not applied yet; safe to run on every start. Without a time
    /// limit: building an index on a large table takes what it takes.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        DEADLINE
            .scope(None, async {
                match &self.pool {
                    Pool::Postgres(pool) => {
                        sqlx::migrate!("./migrations/postgres").run(pool).await?
                    }
                    Pool::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
                }
                Ok::<_, StoreError>(())
            })
            .await
    }

    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(async {
            on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
            Ok(())
        })
        .await
    }

    /// Runs a read operation within the read time limit.
    async fn read<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded(QueryClass::Read, operation).await
    }

    /// Runs a write operation within the write time limit.
    async fn write<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded(QueryClass::Write, operation).await
    }

    /// Runs `operation` until its class's deadline (or an enclosing operation's, if sooner):
    /// past it the caller gets [`StoreError::TimedOut`] and the statement still running is
    /// stopped by the database. A timeout the database reports is the same error.
    async fn bounded<T>(
        &self,
        class: QueryClass,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.timeouts.of(class);
        let mut deadline = Instant::now() + limit;
        if let Ok(Some(enclosing)) = DEADLINE.try_with(|d| *d) {
            deadline = deadline.min(enclosing);
        }
        let timed_out = StoreError::TimedOut { class, limit };
        let bounded = tokio::time::timeout_at(deadline.into(), operation);
        match DEADLINE.scope(Some(deadline), bounded).await {
            Ok(Err(StoreError::Database(e))) if is_timeout(&e, self.is_postgres()) => {
                Err(timed_out)
            }
            Ok(done) => done,
            Err(_elapsed) => Err(timed_out),
        }
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

/// Opens a pool whose connections honour the deadline of the operation they are handed to.
async fn open_pool(url: &DatabaseUrl, settings: PoolSettings) -> Result<Pool, StoreError> {
    let longest = settings.timeouts.longest();
    match url {
        DatabaseUrl::Postgres(text) => {
            let pool = PgPoolOptions::new()
                .max_connections(settings.connections)
                .acquire_timeout(longest)
                // The statement timeout set on every hand-out is the liveness test.
                .test_before_acquire(false)
                .after_connect(move |conn, _| Box::pin(set_statement_timeout(conn, longest)))
                .before_acquire(move |conn, _| {
                    Box::pin(async move {
                        set_statement_timeout(conn, longest).await?;
                        Ok(true)
                    })
                })
                .connect(text)
                .await
                .map_err(|source| StoreError::Connect {
                    url: redact_url(text),
                    source,
                })?;
            Ok(Pool::Postgres(pool))
        }
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
                // One writer at a time: how long a writer waits for the lock, until the
                // operation that takes the connection sets its own.
                .busy_timeout(longest);
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.connections)
                .acquire_timeout(longest)
                // Setting the deadline reaches the connection's thread: the liveness test, in
                // place of sqlx's ping.
                .test_before_acquire(false)
                .after_connect(move |conn, _| Box::pin(stop_sqlite_at_deadline(conn, longest)))
                .before_acquire(move |conn, _| {
                    Box::pin(async move {
                        stop_sqlite_at_deadline(conn, longest).await?;
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await
                .map_err(connect_error)?;
            Ok(Pool::Sqlite(pool))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh SQLite file, removed with its directory when dropped.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A store on a fresh SQLite file, with `connections` and these limits.
    async fn sqlite_store(connections: u32, timeouts: Timeouts) -> (Store, DatabaseUrl, Scratch) {
        let dir = std::env::temp_dir().join(format!("piculet-store-{}", uuid::Uuid::now_v7()));
        let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.join("piculet.db").display()));
        let settings = PoolSettings {
            connections,
            timeouts,
        };
        let store = Store::connect_with(&url, settings).await.unwrap();
        store.migrate().await.unwrap();
        (store, url, Scratch(dir))
    }

    fn limits(read_ms: u64, write_ms: u64) -> Timeouts {
        Timeouts {
            read: Duration::from_millis(read_ms),
            write: Duration::from_millis(write_ms),
        }
    }

    /// A SQLite statement that never ends by itself.
    const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                           SELECT COUNT(*) FROM c WHERE x < 0";

    #[test]
    fn timeout_codes() {
        assert!(is_timeout_code("57014", true));
        assert!(
            !is_timeout_code("23505", true),
            "a unique violation is not a timeout"
        );
        assert!(!is_timeout_code("9", true));
        for code in ["5", "9", "517", "261"] {
            assert!(is_timeout_code(code, false), "{code}");
        }
        assert!(
            !is_timeout_code("19", false),
            "a constraint is not a timeout"
        );
        assert!(!is_timeout_code("2067", false));
        assert!(is_timeout(&sqlx::Error::PoolTimedOut, true));
        assert!(!is_timeout(&sqlx::Error::RowNotFound, false));
    }

    #[test]
    fn a_timeout_names_its_setting_and_limit() {
        let e = StoreError::TimedOut {
            class: QueryClass::Read,
            limit: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "the database did not answer within 1s 500ms (PICULET_DB_READ_TIMEOUT); it is busy, \
             try again shortly"
        );
        assert_eq!(QueryClass::Write.setting(), "PICULET_DB_WRITE_TIMEOUT");
        assert_eq!(limits(1, 2).of(QueryClass::Write), Duration::from_millis(2));
        assert_eq!(limits(3, 2).longest(), Duration::from_millis(3));
    }

    #[tokio::test]
    async fn connections_get_the_deadline_of_the_operation_they_serve() {
        let fallback = Duration::from_secs(60);
        let outside = connection_deadline(fallback).expect("a bound outside any operation");
        assert!(outside > Instant::now() + Duration::from_secs(59));
        let at = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            DEADLINE
                .scope(Some(at), async { connection_deadline(fallback) })
                .await,
            Some(at)
        );
        assert_eq!(
            DEADLINE
                .scope(None, async { connection_deadline(fallback) })
                .await,
            None,
            "migrations run without a limit"
        );
    }

    /// Far beyond every limit of these tests: reached only if a caller would wait forever.
    const HANG: Duration = Duration::from_secs(60);

    /// `operation`, failing clearly if it never ends.
    async fn unless_hung<T>(operation: impl Future<Output = T>) -> T {
        tokio::time::timeout(HANG, operation)
            .await
            .expect("the caller was never released: the timeout did not fire")
    }

    #[tokio::test]
    async fn an_operation_past_its_limit_times_out_and_an_inner_one_keeps_the_outer_deadline() {
        let (store, _, _scratch) = sqlite_store(2, limits(100, 3_600_000)).await;
        // An operation that never ends: only the timeout can release its caller, so the
        // answer proves the caller was released, and its limit that the read's fired.
        let endless = store.read(std::future::pending::<Result<(), StoreError>>());
        assert!(matches!(
            unless_hung(endless).await,
            Err(StoreError::TimedOut { class: QueryClass::Read, limit }) if limit == Duration::from_millis(100)
        ));

        // A write (an hour) inside a read (100 ms) ends with the read: its connections get
        // the read's deadline, not one of an hour from now.
        let nested = store.read(async {
            let outer = DEADLINE.get();
            store
                .write(async move {
                    assert_eq!(
                        DEADLINE.get(),
                        outer,
                        "the inner write keeps the outer deadline"
                    );
                    std::future::pending::<Result<(), StoreError>>().await
                })
                .await
        });
        assert!(matches!(
            unless_hung(nested).await,
            Err(StoreError::TimedOut { .. })
        ));
        store.close().await;
    }

    #[tokio::test]
    async fn sqlite_stops_a_statement_at_its_deadline_and_frees_the_connection() {
        // One connection: the ping after the timeout gets it only if the endless statement
        // was stopped, since the caller gave up on it long before.
        let (store, _, _scratch) = sqlite_store(1, limits(200, 200)).await;
        // The statement never ends by itself: an answer at all means the caller was released
        // at the read's limit.
        let endless = store.read(async {
            on_pool!(store, pool => sqlx::query(ENDLESS).execute(pool).await.map(|_| ()))?;
            Ok(())
        });
        assert!(matches!(
            unless_hung(endless).await,
            Err(StoreError::TimedOut {
                class: QueryClass::Read,
                ..
            })
        ));
        store.ping().await.expect("the connection is free again");
        store.close().await;
    }

    #[tokio::test]
    async fn api_readers_holding_their_pool_leave_the_engine_its_connections() {
        let (api, url, _scratch) = sqlite_store(2, limits(200, 200)).await;
        let engine = api
            .with_own_pool(
                &url,
                PoolSettings {
                    connections: 2,
                    timeouts: limits(200, 200),
                },
            )
            .await
            .unwrap();
        let Pool::Sqlite(pool) = &api.pool else {
            unreachable!()
        };
        let held = [pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];

        // Both connections stay held: the ping is answered only because it gave up at its
        // limit.
        assert!(matches!(
            unless_hung(api.ping()).await,
            Err(StoreError::TimedOut { .. })
        ));

        // Claims, renewals and log lines go through.
        assert!(
            engine
                .claim_workflow("replica", Duration::from_secs(30))
                .await
                .unwrap()
                .is_none()
        );
        let lease = engine
            .renew_lease(uuid::Uuid::now_v7(), "replica", Duration::from_secs(30))
            .await
            .unwrap();
        assert!(!lease.held, "no such workflow");
        // No workflow holds this step: the write is answered (fenced), not left waiting.
        let step = uuid::Uuid::now_v7();
        let line = crate::model::LogLine {
            number: 1,
            at: chrono::Utc::now(),
            text: "hello".into(),
        };
        assert_eq!(
            engine
                .insert_log_lines(step, "replica", vec![line].into())
                .await
                .unwrap(),
            Fenced::LeaseLost
        );
        assert!(engine.last_log_line(step).await.unwrap().is_none());

        drop(held);
        api.ping().await.expect("the API's pool is free again");
        api.close().await;
        engine.close().await;
    }
}
