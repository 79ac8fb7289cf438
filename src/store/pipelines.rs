//! Pipelines with their workflows and steps: create (idempotently), read, list, cancel.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::events::{NewEvent, insert_event, insert_numbered_event, lock_pipeline, subject_text};
use super::{Pool, Store, StoreError, on_pool};
use crate::model::{Pipeline, PipelineSummary, Status, Step, StepKind, Subject, Workflow};
use crate::pipeline::{Concurrency, Diagnostic};
use crate::submission::Kept;

/// A pipeline to insert, already planned; ids are chosen by the caller.
#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub id: Uuid,
    pub name: String,
    /// The submission as kept: without secret values, which are sealed.
    pub submission: Kept,
    /// Secret values and registry credentials, sealed by [`crate::secrets::SecretBox`].
    pub sealed_secrets: Option<Vec<u8>>,
    pub labels: BTreeMap<String, String>,
    pub warnings: Vec<Diagnostic>,
    pub namespace: Option<String>,
    pub timeout_seconds: Option<i64>,
    /// The `Idempotency-Key` header and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    pub retry_of: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub workflows: Vec<NewWorkflow>,
}

#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: Uuid,
    pub name: String,
    pub matrix: BTreeMap<String, String>,
    /// The workflow's plan, as the engine will read it back.
    pub plan: serde_json::Value,
    pub status: Status,
    pub reason: Option<String>,
    /// Whether it may start at once (it depends on no other workflow).
    pub ready: bool,
    /// At most how many workflows of its group may run at once (`concurrency`).
    pub concurrency: Option<Concurrency>,
    pub steps: Vec<NewStep>,
}

#[derive(Debug, Clone)]
pub struct NewStep {
    pub id: Uuid,
    pub name: String,
    pub kind: StepKind,
    pub status: Status,
    pub reason: Option<String>,
}

/// A step with its workflow's id and its position in that workflow.
type PlacedStep<'a> = (Uuid, i32, &'a NewStep);

impl NewWorkflow {
    /// A workflow inserted already finished (skipped) finishes when it is created.
    fn finished_at(&self, created_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.status.is_finished().then_some(created_at)
    }

    /// `concurrency_scope`, `concurrency_group` and `concurrency_limit`: all NULL without
    /// `concurrency`, and the scope `''` when the submission names no repository, so that
    /// the claim compares scopes with `=`.
    fn concurrency_columns(&self) -> (Option<&str>, Option<&str>, Option<i32>) {
        match &self.concurrency {
            Some(c) => (
                Some(c.scope.as_deref().unwrap_or("")),
                Some(c.group.as_str()),
                Some(i32::try_from(c.limit).unwrap_or(i32::MAX)),
            ),
            None => (None, None, None),
        }
    }
}

impl NewPipeline {
    /// Every step of every workflow, in order.
    fn steps(&self) -> impl Iterator<Item = PlacedStep<'_>> {
        self.workflows.iter().flat_map(|w| {
            w.steps
                .iter()
                .zip(0..)
                .map(move |(s, position)| (w.id, position, s))
        })
    }

    /// Event 1: the pipeline is queued. The row is inserted with event_count 1.
    fn first_event(&self) -> NewEvent {
        NewEvent {
            pipeline_id: self.id,
            subject: Subject::Pipeline,
            id: self.id,
            name: self.name.clone(),
            status: Status::Queued,
            exit_code: None,
            reason: None,
            at: self.created_at,
        }
    }

    /// The idempotency key and request hash, as columns.
    fn idempotency_parts(&self) -> (Option<&str>, Option<&str>) {
        match &self.idempotency {
            Some((key, hash)) => (Some(key.as_str()), Some(hash.as_str())),
            None => (None, None),
        }
    }

    /// The pipeline as [`Store::get_pipeline`] reads it right after insertion.
    fn as_pipeline(&self) -> Pipeline {
        Pipeline {
            summary: PipelineSummary {
                id: self.id,
                name: self.name.clone(),
                status: Status::Queued,
                reason: None,
                labels: self.labels.clone(),
                namespace: self.namespace.clone(),
                created_at: self.created_at,
                started_at: None,
                finished_at: None,
            },
            retry_of: self.retry_of,
            warnings: self.warnings.clone(),
            workflows: self
                .workflows
                .iter()
                .map(|w| Workflow {
                    id: w.id,
                    name: w.name.clone(),
                    matrix: w.matrix.clone(),
                    status: w.status,
                    reason: w.reason.clone(),
                    started_at: None,
                    finished_at: w.finished_at(self.created_at),
                    steps: w
                        .steps
                        .iter()
                        .map(|s| Step {
                            id: s.id,
                            name: s.name.clone(),
                            kind: s.kind,
                            status: s.status,
                            reason: s.reason.clone(),
                            exit_code: None,
                            attempt: 0,
                            started_at: None,
                            finished_at: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What [`Store::create_pipeline`] did.
#[derive(Debug)]
pub enum Created {
    /// The pipeline was inserted.
    New(Pipeline),
    /// A pipeline with the same idempotency key exists already; it was created from a request
    /// with this hash.
    Existing {
        pipeline: Pipeline,
        request_hash: Option<String>,
    },
}

/// Which pipelines `list` returns: newest first, before `cursor` when given.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub statuses: BTreeSet<Status>,
    /// Labels a pipeline must all have, as `(key, value)`. The first is the one the database
    /// scans by.
    pub labels: Vec<(String, String)>,
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// A page of [`Store::list_pipelines`].
#[derive(Debug)]
pub struct PipelineList {
    /// Newest first, at most the filter's limit.
    pub items: Vec<PipelineSummary>,
    /// Whether more pipelines match after the last item.
    pub more: bool,
}

/// The label filters as the query needs them: each pair once, in the order given; `None` when
/// no pipeline can match (one key asked with two values: a pipeline has one value per key).
fn required_labels(labels: &[(String, String)]) -> Option<Vec<(&str, &str)>> {
    let mut required: Vec<(&str, &str)> = Vec::with_capacity(labels.len());
    for (key, value) in labels {
        match required.iter().find(|(k, _)| k == key) {
            Some((_, v)) if v == value => {}
            Some(_) => return None,
            None => required.push((key, value)),
        }
    }
    Some(required)
}

/// Pushes the `FROM … WHERE` of a list for these labels; returns the column to order and page
/// by (the pipeline id, from the table the scan walks in that order).
///
/// Without labels the scan walks the pipelines, newest first. With labels it walks the index
/// entries of the first one, newest pipeline first, and keeps a pipeline when its other labels
/// match: one look at that pipeline's few labels, whatever the number of filters. The scan stops
/// once the page is full, and the plan does not grow with the filters (one semi-join per filter
/// made planning alone take 200 ms at 16 filters, and about a minute at 300). Its cost is at
/// most the number of pipelines with the first label: the rarest label is best put first.
fn push_list_source<DB>(q: &mut sqlx::QueryBuilder<DB>, labels: &[(&str, &str)]) -> &'static str
where
    DB: sqlx::Database,
    for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let Some(((key, value), others)) = labels.split_first() else {
        q.push(" FROM pipelines p WHERE 1 = 1");
        return "p.id";
    };
    q.push(" FROM pipeline_labels d JOIN pipelines p ON p.id = d.pipeline_id WHERE d.key = ")
        .push_bind(*key)
        .push(" AND d.value = ")
        .push_bind(*value);
    if !others.is_empty() {
        // A pipeline has one value per key and the pairs are distinct: it has them all when
        // as many of its labels match one. The match is a FILTER, not a WHERE, so that the
        // database reads the pipeline's few labels once (by its primary key) instead of
        // probing an index once per filter.
        q.push(" AND (SELECT COUNT(*) FILTER (WHERE ");
        for (i, (key, value)) in others.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(l.key = ")
                .push_bind(*key)
                .push(" AND l.value = ")
                .push_bind(*value)
                .push(")");
        }
        q.push(") FROM pipeline_labels l WHERE l.pipeline_id = d.pipeline_id) = ")
            .push_bind(others.len() as i64);
    }
    "d.pipeline_id"
}

#[derive(sqlx::FromRow)]
struct PipelineRow {
    id: Uuid,
    name: String,
    status: String,
    reason: Option<String>,
    labels: Json<BTreeMap<String, String>>,
    namespace: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct PipelineDetailRow {
    #[sqlx(flatten)]
    summary: PipelineRow,
    retry_of: Option<Uuid>,
    warnings: Json<Vec<Diagnostic>>,
}

#[derive(sqlx::FromRow)]
struct WorkflowRow {
    id: Uuid,
    name: String,
    matrix: Json<BTreeMap<String, String>>,
    status: String,
    reason: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    id: Uuid,
    workflow_id: Uuid,
    name: String,
    kind: String,
    status: String,
    reason: Option<String>,
    exit_code: Option<i32>,
    attempt: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

fn status(text: &str) -> Result<Status, StoreError> {
    Status::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown status {text:?}")))
}

impl PipelineRow {
    fn into_summary(self) -> Result<PipelineSummary, StoreError> {
        Ok(PipelineSummary {
            id: self.id,
            name: self.name,
            status: status(&self.status)?,
            reason: self.reason,
            labels: self.labels.0,
            namespace: self.namespace,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

/// Rows per multi-row insert on SQLite: 14 parameters a row stays under its limit of 32766.
const ROWS_PER_INSERT: usize = 1000;

/// The columns of a [`PipelineRow`], from the pipelines table as `p`.
const PIPELINE_COLUMNS: &str = "p.id, p.name, p.status, p.reason, p.labels, p.namespace, \
     p.created_at, p.started_at, p.finished_at";

/// The whole pipeline in one statement: each table's rows as arrays, one round trip in all.
/// (Seven round trips, a transaction with a statement per table, took 1.6 times as long.)
const INSERT_PIPELINE: &str = "WITH pipeline AS ( \
           INSERT INTO pipelines (id, name, status, submission, sealed_secrets, labels, warnings, \
             namespace, timeout_seconds, idempotency_key, request_hash, retry_of, event_count, \
             created_at, updated_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13)), \
         labels AS ( \
           INSERT INTO pipeline_labels (pipeline_id, key, value) \
           SELECT $1, * FROM unnest($14::text[], $15::text[])), \
         workflows AS ( \
           INSERT INTO workflows (id, pipeline_id, position, name, matrix, plan, status, reason, \
             ready, created_at, finished_at, concurrency_scope, concurrency_group, \
             concurrency_limit) \
           SELECT w.id, $1, w.position, w.name, w.matrix, w.plan, w.status, w.reason, w.ready, \
             $13, w.finished_at, w.concurrency_scope, w.concurrency_group, w.concurrency_limit \
           FROM unnest($16::uuid[], $17::int4[], $18::text[], $19::jsonb[], $20::jsonb[], \
             $21::text[], $22::text[], $23::bool[], $24::timestamptz[], $25::text[], $26::text[], \
             $27::int4[]) \
             AS w(id, position, name, matrix, plan, status, reason, ready, finished_at, \
               concurrency_scope, concurrency_group, concurrency_limit)), \
         steps AS ( \
           INSERT INTO steps (id, workflow_id, pipeline_id, position, name, kind, status, reason, \
             attempt) \
           SELECT s.id, s.workflow_id, $1, s.position, s.name, s.kind, s.status, s.reason, 0 \
           FROM unnest($28::uuid[], $29::uuid[], $30::int4[], $31::text[], $32::text[], \
             $33::text[], $34::text[]) \
             AS s(id, workflow_id, position, name, kind, status, reason)) \
         INSERT INTO events (pipeline_id, seq, subject, subject_id, status, payload, created_at) \
         VALUES ($1, 1, $35, $36, $37, $38, $39)";

/// Inserts `new` into Postgres as [`Store`] does, without publishing anything. Public for
/// the benchmark, whose plain-SQL baseline is this very statement with the same parameters.
pub async fn insert_pipeline_postgres(
    pool: &sqlx::PgPool,
    new: &NewPipeline,
) -> Result<(), sqlx::Error> {
    let event = new.first_event();
    let (label_keys, label_values): (Vec<&str>, Vec<&str>) = new
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .unzip();
    let workflows = &new.workflows;
    let steps: Vec<PlacedStep<'_>> = new.steps().collect();
    bind_pipeline_row(sqlx::query(INSERT_PIPELINE), new)
        .bind(label_keys)
        .bind(label_values)
        .bind(column(workflows, |w| w.id))
        .bind((0..workflows.len() as i32).collect::<Vec<_>>())
        .bind(column(workflows, |w| w.name.as_str()))
        .bind(column(workflows, |w| Json(&w.matrix)))
        .bind(column(workflows, |w| Json(&w.plan)))
        .bind(column(workflows, |w| w.status.as_str()))
        .bind(column(workflows, |w| w.reason.as_deref()))
        .bind(column(workflows, |w| w.ready))
        .bind(column(workflows, |w| w.finished_at(new.created_at)))
        .bind(column(workflows, |w| w.concurrency_columns().0))
        .bind(column(workflows, |w| w.concurrency_columns().1))
        .bind(column(workflows, |w| w.concurrency_columns().2))
        .bind(column(&steps, |(_, _, s)| s.id))
        .bind(column(&steps, |(w, _, _)| *w))
        .bind(column(&steps, |(_, i, _)| *i))
        .bind(column(&steps, |(_, _, s)| s.name.as_str()))
        .bind(column(&steps, |(_, _, s)| s.kind.as_str()))
        .bind(column(&steps, |(_, _, s)| s.status.as_str()))
        .bind(column(&steps, |(_, _, s)| s.reason.as_deref()))
        .bind(subject_text(event.subject))
        .bind(event.id)
        .bind(event.status.as_str())
        .bind(event.payload())
        .bind(event.at)
        .execute(pool)
        .await?;
    Ok(())
}

/// One column of `rows`, as an array parameter.
fn column<'a, T, U>(rows: &'a [T], value: impl FnMut(&'a T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}

/// Binds the pipelines row, `$1` to `$13`, the same for both databases.
fn bind_pipeline_row<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments>,
    new: &'q NewPipeline,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<Uuid>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Json<&'q Kept>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Json<&'q BTreeMap<String, String>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Json<&'q Vec<Diagnostic>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let (key, hash) = new.idempotency_parts();
    query
        .bind(new.id)
        .bind(new.name.as_str())
        .bind(Status::Queued.as_str())
        .bind(Json(&new.submission))
        .bind(new.sealed_secrets.as_deref())
        .bind(Json(&new.labels))
        .bind(Json(&new.warnings))
        .bind(new.namespace.as_deref())
        .bind(new.timeout_seconds)
        .bind(key)
        .bind(hash)
        .bind(new.retry_of)
        .bind(new.created_at)
}

/// SQLite has no data-modifying `WITH`: one statement per table, in one transaction (in
/// chunks under its limit on bound parameters).
async fn insert_pipeline_sqlite(
    pool: &sqlx::SqlitePool,
    new: &NewPipeline,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    bind_pipeline_row(
        sqlx::query(
            "INSERT INTO pipelines (id, name, status, submission, sealed_secrets, labels, \
         warnings, namespace, timeout_seconds, idempotency_key, request_hash, retry_of, \
         event_count, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13)",
        ),
        new,
    )
    .execute(&mut *tx)
    .await?;
    if !new.labels.is_empty() {
        let mut q =
            sqlx::QueryBuilder::new("INSERT INTO pipeline_labels (pipeline_id, key, value) ");
        q.push_values(&new.labels, |mut row, (key, value)| {
            row.push_bind(new.id).push_bind(key).push_bind(value);
        });
        q.build().execute(&mut *tx).await?;
    }
    let workflows: Vec<(usize, &NewWorkflow)> = new.workflows.iter().enumerate().collect();
    for chunk in workflows.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO workflows (id, pipeline_id, position, name, matrix, plan, status, \
             reason, ready, created_at, finished_at, concurrency_scope, concurrency_group, \
             concurrency_limit) ",
        );
        q.push_values(chunk, |mut row, (position, w)| {
            let (scope, group, limit) = w.concurrency_columns();
            row.push_bind(w.id)
                .push_bind(new.id)
                .push_bind(*position as i32)
                .push_bind(&w.name)
                .push_bind(Json(&w.matrix))
                .push_bind(Json(&w.plan))
                .push_bind(w.status.as_str())
                .push_bind(w.reason.as_deref())
                .push_bind(w.ready)
                .push_bind(new.created_at)
                .push_bind(w.finished_at(new.created_at))
                .push_bind(scope)
                .push_bind(group)
                .push_bind(limit);
        });
        q.build().execute(&mut *tx).await?;
    }
    let steps: Vec<PlacedStep<'_>> = new.steps().collect();
    for chunk in steps.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::new(
            // `attempt` explicitly: SQLite's column kept the default of its first version.
            "INSERT INTO steps (id, workflow_id, pipeline_id, position, name, kind, status, reason, \
             attempt) ",
        );
        q.push_values(chunk, |mut row, (workflow_id, position, s)| {
            row.push_bind(s.id)
                .push_bind(*workflow_id)
                .push_bind(new.id)
                .push_bind(*position)
                .push_bind(&s.name)
                .push_bind(s.kind.as_str())
                .push_bind(s.status.as_str())
                .push_bind(s.reason.as_deref())
                .push("0");
        });
        q.build().execute(&mut *tx).await?;
    }
    insert_numbered_event(&mut tx, new.first_event(), 1).await?;
    tx.commit().await
}

/// Whether an insert failed on a unique constraint (a concurrent request with the same key).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Inserts the pipeline, its workflows and steps and its first event in one transaction.
    /// With an idempotency key already used, inserts nothing and returns the existing pipeline.
    ///
    /// On Postgres the pipeline is stamped with the database's clock: workflows of a
    /// concurrency group wait in the order of these stamps, which replicas on hosts whose
    /// clocks differ would otherwise put out of order.
    pub async fn create_pipeline(&self, mut new: NewPipeline) -> Result<Created, StoreError> {
        self.write(async {
            if let Some(existing) = self.find_idempotent(&new).await? {
                return Ok(existing);
            }
            if let Pool::Postgres(pool) = &self.pool {
                let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
                    .fetch_one(pool)
                    .await?;
                // Microseconds: what Postgres keeps, so that the answer equals a later read.
                new.created_at = now.trunc_subsecs(6);
            }
            let new = &new;
            match self.insert_pipeline(new).await {
                Ok(()) => {}
                Err(StoreError::Database(e))
                    if new.idempotency.is_some() && is_unique_violation(&e) =>
                {
                    // Another request with the same key won the race; answer as it did.
                    if let Some(existing) = self.find_idempotent(new).await? {
                        return Ok(existing);
                    }
                    return Err(StoreError::Database(e));
                }
                Err(e) => return Err(e),
            }
            // What was just inserted, without reading it back.
            Ok(Created::New(new.as_pipeline()))
        })
        .await
    }

    async fn find_idempotent(&self, new: &NewPipeline) -> Result<Option<Created>, StoreError> {
        let Some((key, _)) = &new.idempotency else {
            return Ok(None);
        };
        let found: Option<(Uuid, Option<String>)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_hash FROM pipelines WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        let Some((id, request_hash)) = found else {
            return Ok(None);
        };
        let pipeline = self
            .get_pipeline(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("idempotent pipeline vanished".into()))?;
        Ok(Some(Created::Existing {
            pipeline,
            request_hash,
        }))
    }

    async fn insert_pipeline(&self, new: &NewPipeline) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => insert_pipeline_postgres(pool, new).await?,
            Pool::Sqlite(pool) => insert_pipeline_sqlite(pool, new).await?,
        }
        self.publish(vec![new.first_event().numbered(1)]);
        Ok(())
    }

    /// The pipeline with its workflows and steps.
    pub async fn get_pipeline(&self, id: Uuid) -> Result<Option<Pipeline>, StoreError> {
        self.read(async {
            let (row, workflows, steps): (
                Option<PipelineDetailRow>,
                Vec<WorkflowRow>,
                Vec<StepRow>,
            ) = on_pool!(self, pool => {
                let row = sqlx::query_as(
                    "SELECT id, name, status, reason, labels, namespace, created_at, started_at, \
                     finished_at, retry_of, warnings FROM pipelines WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?;
                if row.is_none() {
                    return Ok(None);
                }
                let workflows = sqlx::query_as(
                    "SELECT id, name, matrix, status, reason, started_at, finished_at \
                     FROM workflows WHERE pipeline_id = $1 ORDER BY position",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                let steps = sqlx::query_as(
                    "SELECT id, workflow_id, name, kind, status, reason, exit_code, attempt, \
                     started_at, finished_at FROM steps WHERE pipeline_id = $1 ORDER BY workflow_id, position",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                (row, workflows, steps)
            });
            let Some(row) = row else { return Ok(None) };

            let mut steps_by_workflow: BTreeMap<Uuid, Vec<Step>> = BTreeMap::new();
            for s in steps {
                let kind = StepKind::parse(&s.kind).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown step kind {:?}", s.kind))
                })?;
                steps_by_workflow
                    .entry(s.workflow_id)
                    .or_default()
                    .push(Step {
                        id: s.id,
                        name: s.name,
                        kind,
                        status: status(&s.status)?,
                        reason: s.reason,
                        exit_code: s.exit_code,
                        attempt: u32::try_from(s.attempt).unwrap_or(0),
                        started_at: s.started_at,
                        finished_at: s.finished_at,
                    });
            }
            let workflows = workflows
                .into_iter()
                .map(|w| {
                    Ok(Workflow {
                        steps: steps_by_workflow.remove(&w.id).unwrap_or_default(),
                        id: w.id,
                        name: w.name,
                        matrix: w.matrix.0,
                        status: status(&w.status)?,
                        reason: w.reason,
                        started_at: w.started_at,
                        finished_at: w.finished_at,
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(Some(Pipeline {
                retry_of: row.retry_of,
                warnings: row.warnings.0,
                summary: row.summary.into_summary()?,
                workflows,
            }))
        })
        .await
    }

    /// The submission as kept and its sealed secrets: what a retry submits again.
    pub async fn pipeline_submission(
        &self,
        id: Uuid,
    ) -> Result<Option<(Kept, Option<Vec<u8>>)>, StoreError> {
        self.read(async {
            let row: Option<(Json<Kept>, Option<Vec<u8>>)> = on_pool!(self, pool => {
                sqlx::query_as("SELECT submission, sealed_secrets FROM pipelines WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            });
            Ok(row.map(|(s, sealed)| (s.0, sealed)))
        })
        .await
    }

    /// Pipelines newest first, filtered; pass the last id seen as `before` for the next page.
    /// One row more than the page is read, so that a page knows whether another follows: an
    /// exactly full last page says there is none, rather than send the client to an empty one.
    pub async fn list_pipelines(&self, filter: &ListFilter) -> Result<PipelineList, StoreError> {
        let Some(labels) = required_labels(&filter.labels) else {
            return Ok(PipelineList {
                items: Vec::new(),
                more: false,
            });
        };
        let rows: Vec<PipelineRow> = self
            .read(async {
                Ok(on_pool!(self, pool => {
                    let mut q = sqlx::QueryBuilder::new("SELECT ");
                    q.push(PIPELINE_COLUMNS);
                    let order = push_list_source(&mut q, &labels);
                    if !filter.statuses.is_empty() {
                        q.push(" AND p.status IN (");
                        let mut list = q.separated(", ");
                        for s in &filter.statuses {
                            list.push_bind(s.as_str());
                        }
                        q.push(")");
                    }
                    if let Some(before) = filter.before {
                        q.push(format_args!(" AND {order} < ")).push_bind(before);
                    }
                    q.push(format_args!(" ORDER BY {order} DESC LIMIT "))
                        .push_bind(i64::from(filter.limit) + 1);
                    q.build_query_as().fetch_all(pool).await?
                }))
            })
            .await?;
        let more = rows.len() > filter.limit as usize;
        let items = rows
            .into_iter()
            .take(filter.limit as usize)
            .map(PipelineRow::into_summary)
            .collect::<Result<_, _>>()?;
        Ok(PipelineList { items, more })
    }

    /// Cancels a pipeline: its queued workflows and steps become `canceled` at once, and a
    /// workflow already running is marked for the engine to stop (no queued one is claimed
    /// after this). A finished pipeline is left as it is. Returns `None` when there is no such
    /// pipeline.
    pub async fn cancel_pipeline(&self, id: Uuid) -> Result<Option<Pipeline>, StoreError> {
        self.write(async {
        let now = Utc::now();
        let reason = "canceled before it started";
        let mut events = Vec::new();
        let found = on_pool!(self, pool => {
            // First the flag, on its own: from its commit on, no worker claims a queued
            // workflow of this pipeline. Writing first also takes the write lock at once on
            // SQLite, where a read-then-write transaction may fail under concurrent writers.
            let flagged: Option<(String,)> = sqlx::query_as(
                "UPDATE pipelines SET cancel_requested = TRUE, updated_at = $1 WHERE id = $2 \
                 RETURNING status",
            )
            .bind(now)
            .bind(id)
            .fetch_optional(pool)
            .await?;
            match flagged.as_ref().map(|(s,)| status(s)).transpose()? {
                None => false,
                Some(s) if s.is_finished() => true,
                Some(_) => {
                    let mut tx = pool.begin().await?;
                    lock_pipeline(&mut *tx, id).await?;
                    // A workflow a worker is claiming right now is skipped: it runs, sees the
                    // flag at its first lease renewal, and stops.
                    let lock = if matches!(self.pool, super::Pool::Postgres(_)) { " FOR UPDATE SKIP LOCKED" } else { "" };
                    let workflows: Vec<(Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "UPDATE workflows SET status = 'canceled', reason = $1, finished_at = $2 \
                         WHERE id IN (SELECT id FROM workflows WHERE pipeline_id = $3 \
                                      AND status = 'queued'{lock}) RETURNING id, name"
                    )))
                    .bind(reason).bind(now).bind(id)
                    .fetch_all(&mut *tx).await?;
                    for (workflow_id, workflow_name) in &workflows {
                        let steps: Vec<(Uuid, String)> = sqlx::query_as(
                            "UPDATE steps SET status = 'canceled', reason = $1, finished_at = $2 \
                             WHERE workflow_id = $3 AND status = 'queued' RETURNING id, name",
                        )
                        .bind(reason).bind(now).bind(workflow_id)
                        .fetch_all(&mut *tx).await?;
                        let changes = steps.into_iter().map(|(sid, name)| (Subject::Step, sid, name))
                            .chain(std::iter::once((Subject::Workflow, *workflow_id, workflow_name.clone())));
                        for (subject, subject_id, name) in changes {
                            events.push(insert_event(&mut tx, NewEvent {
                                pipeline_id: id,
                                subject,
                                id: subject_id,
                                name,
                                status: Status::Canceled,
                                exit_code: None,
                                reason: Some(reason.to_string()),
                                at: now,
                            }).await?);
                        }
                    }
                    let (unfinished,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM workflows WHERE pipeline_id = $1 \
                         AND status IN ('queued', 'running')",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx).await?;
                    if unfinished == 0 {
                        let ended: Option<(String,)> = sqlx::query_as(
                            "UPDATE pipelines SET status = 'canceled', reason = $1, finished_at = $2, \
                             updated_at = $2 WHERE id = $3 AND status IN ('queued', 'running') \
                             RETURNING name",
                        )
                        .bind(reason).bind(now).bind(id)
                        .fetch_optional(&mut *tx).await?;
                        if let Some((name,)) = ended {
                            events.push(insert_event(&mut tx, NewEvent {
                                pipeline_id: id,
                                subject: Subject::Pipeline,
                                id,
                                name,
                                status: Status::Canceled,
                                exit_code: None,
                                reason: Some(reason.to_string()),
                                at: now,
                            }).await?);
                        }
                    }
                    tx.commit().await?;
                    true
                }
            }
        });
        self.publish(events);
        if !found {
            return Ok(None);
        }
        self.get_pipeline(id).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_filters_are_taken_once_in_order() {
        let given = pairs(&[("team", "red"), ("env", "prod"), ("team", "red")]);
        assert_eq!(
            required_labels(&given),
            Some(vec![("team", "red"), ("env", "prod")])
        );
        assert_eq!(required_labels(&[]), Some(vec![]));
    }

    #[test]
    fn one_key_with_two_values_matches_nothing() {
        let given = pairs(&[("team", "red"), ("env", "prod"), ("team", "blue")]);
        assert_eq!(required_labels(&given), None);
    }

    #[test]
    fn the_first_label_drives_the_list_and_the_others_are_one_count() {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT p.id");
        assert_eq!(push_list_source(&mut q, &[]), "p.id");
        assert_eq!(q.sql().as_str(), "SELECT p.id FROM pipelines p WHERE 1 = 1");

        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT p.id");
        let order = push_list_source(&mut q, &[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(order, "d.pipeline_id");
        assert_eq!(
            q.sql().as_str(),
            "SELECT p.id FROM pipeline_labels d JOIN pipelines p ON p.id = d.pipeline_id \
             WHERE d.key = $1 AND d.value = $2 AND (SELECT COUNT(*) FILTER (WHERE \
             (l.key = $3 AND l.value = $4) OR (l.key = $5 AND l.value = $6)) \
             FROM pipeline_labels l WHERE l.pipeline_id = d.pipeline_id) = $7"
        );
    }
}
