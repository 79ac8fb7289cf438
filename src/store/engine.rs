//! What the engine records: claiming workflows through a lease, renewing and releasing it,
//! every step's start and end, and a workflow's end with what follows from it (dependent
//! workflows becoming ready or skipped, the pipeline's final status). Every change is one
//! transaction with its events, published after commit.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::events::{NewEvent, insert_event, lock_pipeline};
use super::{Store, StoreError, on_pool};
use crate::model::{Event, Status, StepKind, Subject};
use crate::pipeline::{self, WorkflowPlan};
use crate::run::Run;

/// A workflow this replica now holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedWorkflow {
    pub workflow_id: Uuid,
    pub pipeline_id: Uuid,
    pub plan: WorkflowPlan,
    /// The claim took over an expired lease: another replica (or this one before a restart)
    /// ran it, and some steps may have run or still run.
    pub takeover: bool,
    pub steps: Vec<StepState>,
    /// What the submission gave the run besides its plan (variables, repo, namespace); why
    /// not, when the kept submission cannot be read as one. A claim never fails on it: the
    /// workflow would be claimed again and again, ahead of all others.
    pub run: Result<Run, String>,
    /// The secret values and registry credentials, sealed (see [`crate::run::sealed`]).
    pub sealed_secrets: Option<Vec<u8>>,
    pub pipeline_started_at: DateTime<Utc>,
    /// The submission's `timeout`, if it gave one.
    pub pipeline_timeout: Option<std::time::Duration>,
    pub pipeline_created_at: DateTime<Utc>,
    /// A cancel was requested (through any replica) before this claim: the workflow is
    /// stopped at once, and nothing of it is started again.
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StepState {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub kind: KindText,
    #[sqlx(try_from = "String")]
    pub status: StatusText,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// Attempts started so far; 0 before the first.
    pub attempt: i32,
    /// The backend accepted the start of `attempt`.
    pub launched: bool,
}

/// What recording the start of an attempt found (see [`Store::step_started`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRecord {
    /// The start is committed (now, or by an earlier try whose answer was lost): the backend
    /// may be asked to start this attempt.
    Recorded,
    /// The step is not this replica's to start: another replica holds the workflow's lease,
    /// or the step is at another attempt or finished. Nothing may be started.
    Refused,
}

/// A step kind read from its column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KindText(pub StepKind);

impl TryFrom<String> for KindText {
    type Error = StoreError;
    fn try_from(text: String) -> Result<Self, StoreError> {
        StepKind::parse(&text)
            .map(KindText)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown step kind {text:?}")))
    }
}

/// A status read from its column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusText(pub Status);

impl TryFrom<String> for StatusText {
    type Error = StoreError;
    fn try_from(text: String) -> Result<Self, StoreError> {
        Status::parse(&text)
            .map(StatusText)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {text:?}")))
    }
}

/// What a lease renewal learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// False when another replica took the workflow over: stop working on it.
    pub held: bool,
    pub cancel_requested: bool,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    pipeline_id: Uuid,
    plan: Json<WorkflowPlan>,
    claims: i32,
}

#[derive(sqlx::FromRow)]
struct PipelineRunRow {
    /// The kept submission, read as the run it holds (see [`Run`]) once claimed.
    submission: Json<serde_json::Value>,
    sealed_secrets: Option<Vec<u8>>,
    started_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    timeout_seconds: Option<i64>,
    cancel_requested: bool,
}

#[derive(sqlx::FromRow)]
struct SiblingRow {
    id: Uuid,
    name: String,
    status: String,
    ready: bool,
    plan: Json<Option<WorkflowPlan>>,
}

/// The time leases are measured by, read through `$exec`: the database's clock on Postgres,
/// where replicas on different hosts compare each other's leases and a host whose clock is a
/// minute ahead would otherwise take every workflow over as soon as it looks; this host's
/// clock on SQLite, which serves one replica.
macro_rules! lease_now {
    ($store:expr, $exec:expr) => {
        if $store.is_postgres() {
            sqlx::query_scalar::<_, DateTime<Utc>>("SELECT clock_timestamp()")
                .fetch_one($exec)
                .await?
        } else {
            $store.local_now()
        }
    };
}

/// What a released lease is set to: expired by every clock.
const RELEASED: DateTime<Utc> = DateTime::<Utc>::UNIX_EPOCH;

const STEP_COLUMNS: &str =
    "id, pipeline_id, name, kind, status, exit_code, reason, started_at, attempt, launched";

fn new_event(
    pipeline_id: Uuid,
    subject: Subject,
    id: Uuid,
    name: String,
    status: Status,
    at: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        pipeline_id,
        subject,
        id,
        name,
        status,
        exit_code: None,
        reason: None,
        at,
    }
}

/// How many times a claim on Postgres looks again when the workflow it found was taken, or its
/// group filled, by another replica between the look and the claim.
const CLAIM_TRIES: usize = 3;

/// How many waiting workflows one [`Store::note_waiting`] marks; the rest at its next call.
const WAITING_NOTES: i64 = 64;

/// Which concurrency groups a claim statement may claim from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Groups {
    /// Every group, counted in the statement: SQLite, where one writer at a time makes the
    /// count and the claim one atomic step; and the look for a candidate on Postgres.
    All,
    /// Only workflows without a group (and expired leases, which keep their slot).
    Ungrouped,
    /// Those without a group and the one group (`$4` scope, `$5` group) whose lock the
    /// transaction holds.
    Locked,
}

/// The common table expressions `queue`, `running` and `places`: for each queued workflow
/// of a concurrency group (of a pipeline not being canceled), how many of its group run, how
/// many are ahead of it, and its group's limit as it declares it.
///
/// Ahead of a workflow are the queued workflows of its group from earlier pipelines (in the
/// order pipelines were created, ready or not: a slower `depends_on` cannot reorder them),
/// and the ready ones of its own pipeline at an earlier position. A workflow of its own
/// pipeline that is not ready is not ahead: it may be waiting for this very one, and
/// reserving its place would deadlock the pipeline. It may start when those running and
/// those ahead together leave a place under its limit.
fn places(groups: Groups) -> String {
    let only = if groups == Groups::Locked {
        " AND w.concurrency_scope = $4 AND w.concurrency_group = $5"
    } else {
        ""
    };
    format!(
        "queue AS ( \
           SELECT w.id, w.ready, w.concurrency_scope AS scope, w.concurrency_group AS grp, \
             w.concurrency_limit AS lim, \
             COUNT(*) OVER (PARTITION BY w.concurrency_scope, w.concurrency_group \
                            ORDER BY w.created_at, w.pipeline_id) \
             - COUNT(*) OVER (PARTITION BY w.concurrency_scope, w.concurrency_group, w.pipeline_id) \
             + COALESCE(SUM(CASE WHEN w.ready THEN 1 ELSE 0 END) OVER ( \
                 PARTITION BY w.concurrency_scope, w.concurrency_group, w.pipeline_id \
                 ORDER BY w.position ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS ahead \
           FROM workflows w \
           WHERE w.status = 'queued' AND w.concurrency_group IS NOT NULL{only} \
             AND NOT EXISTS (SELECT 1 FROM pipelines p \
                             WHERE p.id = w.pipeline_id AND p.cancel_requested)), \
         running AS ( \
           SELECT w.concurrency_scope AS scope, w.concurrency_group AS grp, COUNT(*) AS n \
           FROM workflows w \
           WHERE w.status = 'running' AND w.concurrency_group IS NOT NULL{only} \
           GROUP BY w.concurrency_scope, w.concurrency_group), \
         places AS ( \
           SELECT q.id, q.ready, q.grp, q.lim, q.ahead, COALESCE(r.n, 0) AS running \
           FROM queue q LEFT JOIN running r ON r.scope = q.scope AND r.grp = q.grp)"
    )
}

/// The condition a claimable workflow (of the `workflows` table, unaliased) meets, `now` being
/// the parameter that holds the time: queued and ready, its pipeline not being canceled, and
/// with a place in its concurrency group (see [`places`]); or running with an expired lease,
/// to be adopted (it keeps its place: it was counted as running all along).
fn claimable(groups: Groups, now: &str) -> String {
    let group = match groups {
        Groups::Ungrouped => "concurrency_group IS NULL",
        Groups::All | Groups::Locked => {
            "(concurrency_group IS NULL OR id IN (SELECT id FROM places \
                                                  WHERE ready AND running + ahead < lim))"
        }
    };
    format!(
        "((status = 'queued' AND ready AND {group}) \
          OR (status = 'running' AND lease_expires_at < {now})) \
         AND NOT EXISTS (SELECT 1 FROM pipelines p \
                         WHERE p.id = workflows.pipeline_id \
                           AND p.cancel_requested AND workflows.status = 'queued')"
    )
}

/// The claim statement: takes the oldest claimable workflow (see [`claimable`]) for the lease.
/// A queued workflow that waited for its group no longer says so once it runs.
fn claim_statement(groups: Groups, postgres: bool) -> String {
    // Postgres: SKIP LOCKED lets replicas claim side by side without waiting on each
    // other. SQLite has one writer at a time, which makes the plain statement atomic.
    let lock = if postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let with = match groups {
        Groups::Ungrouped => String::new(),
        Groups::All | Groups::Locked => format!("WITH {} ", places(groups)),
    };
    format!(
        "{with}UPDATE workflows SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
         started_at = COALESCE(started_at, $3), claims = claims + 1, \
         reason = CASE WHEN status = 'queued' THEN NULL ELSE reason END \
         WHERE id = (SELECT id FROM workflows WHERE {} \
                     ORDER BY created_at, position LIMIT 1{lock}) \
         RETURNING id, pipeline_id, plan, claims",
        claimable(groups, "$3")
    )
}

/// What one try at a claim found.
enum Claim {
    Claimed(Box<ClaimedWorkflow>, Vec<Event>),
    /// Nothing is claimable.
    Nothing,
    /// Something looked claimable but was taken (or its group filled) meanwhile: look again.
    Raced,
}

/// A queued workflow that waits for its concurrency group and does not say so, or says so
/// with numbers that have changed, as [`Store::note_waiting`] finds it.
#[derive(sqlx::FromRow)]
struct WaitingRow {
    id: Uuid,
    pipeline_id: Uuid,
    /// Its reason now: `None` until it is first marked.
    was: Option<String>,
    /// What it says once marked.
    why: String,
}

/// How every waiting reason begins: what marks a reason as one of these.
const WAITING: &str = "waiting for concurrency group ";

/// The workflows of one concurrency group running and waiting, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCount {
    /// The submissions' `CI_REPO`; empty for those without one.
    pub scope: String,
    pub group: String,
    pub running: i64,
    /// Queued and ready: only their group holds them back.
    pub waiting: i64,
}

/// Per concurrency group, the workflows running and waiting: the groups with the most
/// workflows one by one, the rest summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConcurrencyCounts {
    pub groups: Vec<GroupCount>,
    /// The groups left out, summed: (running, waiting); `None` when none was left out.
    pub others: Option<(i64, i64)>,
}

impl Store {
    /// Claims the oldest runnable workflow — a queued one whose dependencies let it run and
    /// whose concurrency group has a place, or a running one whose lease expired — for
    /// `lease` from now.
    ///
    /// At most `limit` workflows of a concurrency group run at once, across replicas. On
    /// SQLite the count and the claim are one statement under the one write lock. On Postgres
    /// a claim first looks for the oldest runnable workflow; when it is queued in a group, the
    /// claim takes that group's transaction-scoped advisory lock and counts again, in a
    /// statement whose snapshot comes after the lock: two replicas claiming in one group at
    /// once take turns, and the second counts what the first claimed. A workflow taken over
    /// from an expired lease needs no lock: it keeps the place it holds.
    pub async fn claim_workflow(
        &self,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Option<ClaimedWorkflow>, StoreError> {
        self.write(async {
            for _ in 0..CLAIM_TRIES {
                match self.try_claim(owner, lease).await? {
                    Claim::Claimed(claimed, events) => {
                        self.publish(events);
                        return Ok(Some(*claimed));
                    }
                    Claim::Nothing => return Ok(None),
                    Claim::Raced => {}
                }
            }
            // Taken from under us each time: the next poll looks again.
            Ok(None)
        })
        .await
    }

    async fn try_claim(
        &self,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Claim, StoreError> {
        let postgres = self.is_postgres();
        let mut events = Vec::new();
        let claim = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let (groups, group) = if postgres {
                // The oldest runnable workflow as of now (the database's clock, read in the
                // statement itself: one round trip), to know which group to lock.
                let look: Option<(String, Option<String>, Option<String>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "WITH {} SELECT status, concurrency_scope, concurrency_group \
                         FROM workflows WHERE {} ORDER BY created_at, position LIMIT 1",
                        places(Groups::All),
                        claimable(Groups::All, "clock_timestamp()")
                    )))
                    .fetch_optional(&mut *tx)
                    .await?;
                match look {
                    None => return Ok(Claim::Nothing),
                    Some((status, Some(scope), Some(group))) if status == "queued" => {
                        sqlx::query(
                            "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))",
                        )
                        .bind(&scope)
                        .bind(&group)
                        .execute(&mut *tx)
                        .await?;
                        (Groups::Locked, Some((scope, group)))
                    }
                    Some(_) => (Groups::Ungrouped, None),
                }
            } else {
                (Groups::All, None)
            };
            // On Postgres taken after the group's lock: a start time after the end of
            // whatever freed the place.
            let now = lease_now!(self, &mut *tx);
            let expires = now + chrono::Duration::from_std(lease).unwrap_or_default();
            let mut claim = sqlx::query_as(sqlx::AssertSqlSafe(claim_statement(groups, postgres)))
                .bind(owner)
                .bind(expires)
                .bind(now);
            if let Some((scope, group)) = &group {
                claim = claim.bind(scope).bind(group);
            }
            let row: Option<ClaimRow> = claim.fetch_optional(&mut *tx).await?;
            let Some(row) = row else {
                return Ok(if postgres { Claim::Raced } else { Claim::Nothing });
            };
            let takeover = row.claims > 1;
            if !takeover {
                events.push(insert_event(&mut tx, new_event(
                    row.pipeline_id, Subject::Workflow, row.id, row.plan.0.name.clone(), Status::Running, now,
                )).await?);
            }
            let started: Option<(String,)> = sqlx::query_as(
                "UPDATE pipelines SET status = 'running', started_at = $1, updated_at = $1 \
                 WHERE id = $2 AND status = 'queued' RETURNING name",
            )
            .bind(now)
            .bind(row.pipeline_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((name,)) = started {
                events.push(insert_event(&mut tx, new_event(
                    row.pipeline_id, Subject::Pipeline, row.pipeline_id, name, Status::Running, now,
                )).await?);
            }
            let pipeline: PipelineRunRow = sqlx::query_as(
                "SELECT submission, sealed_secrets, started_at, created_at, timeout_seconds, \
                 cancel_requested FROM pipelines WHERE id = $1",
            )
            .bind(row.pipeline_id)
            .fetch_one(&mut *tx)
            .await?;
            let steps: Vec<StepState> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = $1 ORDER BY position"
            )))
            .bind(row.id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            ClaimedWorkflow {
                workflow_id: row.id,
                pipeline_id: row.pipeline_id,
                plan: row.plan.0,
                takeover,
                steps,
                run: serde_json::from_value(pipeline.submission.0)
                    .map_err(|e| format!("the stored submission is unreadable: {e}")),
                sealed_secrets: pipeline.sealed_secrets,
                pipeline_started_at: pipeline.started_at.unwrap_or(now),
                // Submissions are refused without a positive timeout; a stored count below one
                // second still gives a step that second.
                pipeline_timeout: pipeline
                    .timeout_seconds
                    .map(|s| std::time::Duration::from_secs(s.max(1).unsigned_abs())),
                pipeline_created_at: pipeline.created_at,
                cancel_requested: pipeline.cancel_requested,
            }
        });
        Ok(Claim::Claimed(Box::new(claim), events))
    }

    /// Marks the queued workflows that wait for their concurrency group: each gets its reason
    /// (`waiting for concurrency group deploy: 1 of 1 running`, and `, 2 queued ahead` when
    /// earlier workflows of the group wait too) and, when it starts waiting, one event; a later
    /// call brings the numbers of the reason up to date without another event (also once its
    /// group has a place for it and it only waits for a replica to claim it: `0 of 1 running`),
    /// and a claim clears it. Returns how many workflows started waiting. At most [`WAITING_NOTES`]
    /// workflows are written per call; the rest at the next.
    ///
    /// Each mark takes its pipeline's lock first, as a cancel does, so that a cancel never
    /// skips a workflow being marked (it would stay queued).
    pub async fn note_waiting(&self) -> Result<usize, StoreError> {
        self.write(async {
            let waiting: Vec<WaitingRow> = on_pool!(self, pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "WITH {}, waiting AS ( \
                       SELECT w.id, w.pipeline_id, w.reason AS was, w.created_at, w.position, \
                         '{WAITING}' || pl.grp || ': ' || CAST(pl.running AS TEXT) || ' of ' \
                         || CAST(pl.lim AS TEXT) || ' running' \
                         || CASE WHEN pl.ahead > 0 \
                                 THEN ', ' || CAST(pl.ahead AS TEXT) || ' queued ahead' \
                                 ELSE '' END AS why \
                       FROM places pl JOIN workflows w ON w.id = pl.id \
                       WHERE pl.ready AND (pl.running + pl.ahead >= pl.lim \
                                           OR w.reason LIKE '{WAITING}%')) \
                     SELECT id, pipeline_id, was, why FROM waiting \
                     WHERE was IS NULL OR (was <> why AND was LIKE '{WAITING}%') \
                     ORDER BY created_at, position LIMIT $1",
                    places(Groups::All)
                )))
                .bind(WAITING_NOTES)
                .fetch_all(pool)
                .await?
            });
            // A claim locks the workflow, then its pipeline; a mark locks them the other way
            // round (as a cancel does). On Postgres a workflow being claimed is skipped, not
            // waited for: waiting would deadlock with the claim, which wins anyway.
            let mark = format!(
                "UPDATE workflows SET reason = $1 \
                 WHERE id = $2 AND status = 'queued' \
                   AND (reason = $3 OR (reason IS NULL AND $4)){} RETURNING name",
                if self.is_postgres() {
                    " AND id IN (SELECT id FROM workflows WHERE id = $2 FOR UPDATE SKIP LOCKED)"
                } else {
                    ""
                }
            );
            let mut started = 0;
            for w in waiting {
                let event = on_pool!(self, pool => {
                    let mut tx = pool.begin().await?;
                    lock_pipeline(&mut *tx, w.pipeline_id).await?;
                    // Only as it was read: a claim (or a cancel) since then wins.
                    let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(mark.as_str()))
                    .bind(&w.why)
                    .bind(w.id)
                    .bind(w.was.as_deref())
                    .bind(w.was.is_none())
                    .fetch_optional(&mut *tx)
                    .await?;
                    let event = match row {
                        Some((name,)) if w.was.is_none() => Some(
                            insert_event(&mut tx, NewEvent {
                                reason: Some(w.why.clone()),
                                ..new_event(w.pipeline_id, Subject::Workflow, w.id, name, Status::Queued, Utc::now())
                            })
                            .await?,
                        ),
                        _ => None,
                    };
                    tx.commit().await?;
                    event
                });
                started += usize::from(event.is_some());
                self.publish(event.into_iter().collect());
            }
            Ok(started)
        })
        .await
    }

    /// Extends the lease while this replica still holds it, and reports a cancel request.
    pub async fn renew_lease(
        &self,
        workflow_id: Uuid,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<LeaseState, StoreError> {
        self.write(async {
            let lease = chrono::Duration::from_std(lease).unwrap_or_default();
            let row: Option<(bool,)> = on_pool!(self, pool => {
                let expires = lease_now!(self, pool) + lease;
                let updated = sqlx::query(
                    "UPDATE workflows SET lease_expires_at = $1 \
                     WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
                )
                .bind(expires)
                .bind(workflow_id)
                .bind(owner)
                .execute(pool)
                .await?;
                if updated.rows_affected() == 0 {
                    None
                } else {
                    sqlx::query_as(
                        "SELECT p.cancel_requested FROM pipelines p JOIN workflows w \
                         ON w.pipeline_id = p.id WHERE w.id = $1",
                    )
                    .bind(workflow_id)
                    .fetch_optional(pool)
                    .await?
                }
            });
            Ok(match row {
                Some((cancel_requested,)) => LeaseState {
                    held: true,
                    cancel_requested,
                },
                None => LeaseState {
                    held: false,
                    cancel_requested: false,
                },
            })
        })
        .await
    }

    /// Gives the lease up at once (shutdown), so that another replica takes the workflow over
    /// without waiting for it to expire.
    pub async fn release_lease(&self, workflow_id: Uuid, owner: &str) -> Result<(), StoreError> {
        self.write(async {
            on_pool!(self, pool => {
                sqlx::query(
                    "UPDATE workflows SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3",
                )
                .bind(RELEASED)
                .bind(workflow_id)
                .bind(owner)
                .execute(pool)
                .await
                .map(|_| ())
            })?;
            Ok(())
        })
        .await
    }

    /// Gives up the leases `owner` holds on running workflows other than `keep`: a claim whose
    /// commit landed after its caller stopped waiting (a write timeout) left such a lease, on a
    /// workflow no worker of this replica runs. Released, another replica (or this one) claims
    /// it at once instead of after the lease runs out.
    pub async fn release_stray_claims(
        &self,
        owner: &str,
        keep: &std::collections::HashSet<Uuid>,
    ) -> Result<u64, StoreError> {
        self.write(async {
            let held: Vec<(Uuid,)> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT id FROM workflows WHERE lease_owner = $1 AND status = 'running'",
                )
                .bind(owner)
                .fetch_all(pool)
                .await?
            });
            let mut released = 0;
            for (id,) in held.into_iter().filter(|(id,)| !keep.contains(id)) {
                on_pool!(self, pool => {
                    released += sqlx::query(
                        "UPDATE workflows SET lease_expires_at = $1 \
                         WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
                    )
                    .bind(RELEASED)
                    .bind(id)
                    .bind(owner)
                    .execute(pool)
                    .await?
                    .rows_affected();
                });
            }
            Ok(released)
        })
        .await
    }

    pub async fn step(&self, step_id: Uuid) -> Result<Option<StepState>, StoreError> {
        self.read(async {
            Ok(on_pool!(self, pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {STEP_COLUMNS} FROM steps WHERE id = $1"
                )))
                .bind(step_id)
                .fetch_optional(pool)
                .await?
            }))
        })
        .await
    }

    /// Commits the start of attempt `attempt` of a step, before the backend is asked to start
    /// it: the step becomes `running` at that attempt, not yet launched. Attempt 1 starts a
    /// queued step; a later one follows the attempt before it (which was interrupted; `why`
    /// says so in the event). Only the holder of the workflow's lease may record a start, so
    /// that a replica that lost its lease cannot start a step another one adopted. Idempotent:
    /// a retry after an answer that was lost finds its own start and reports it recorded.
    #[allow(clippy::too_many_arguments)]
    pub async fn step_started(
        &self,
        pipeline_id: Uuid,
        step_id: Uuid,
        owner: &str,
        attempt: u32,
        why: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<StartRecord, StoreError> {
        let attempt = i32::try_from(attempt)
            .map_err(|_| StoreError::Corrupt(format!("attempt {attempt} is out of range")))?;
        self.write(async {
        let (record, event) = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            lock_pipeline(&mut *tx, pipeline_id).await?;
            let row: Option<(Uuid, String)> = sqlx::query_as(
                "UPDATE steps SET status = 'running', attempt = $1, launched = FALSE, reason = $2, \
                 started_at = COALESCE(started_at, $3) \
                 WHERE id = $4 AND attempt = $1 - 1 AND status IN ('queued', 'running') \
                   AND EXISTS (SELECT 1 FROM workflows w WHERE w.id = steps.workflow_id \
                               AND w.status = 'running' AND w.lease_owner = $5) \
                 RETURNING pipeline_id, name",
            )
            .bind(attempt)
            .bind(why.as_deref())
            .bind(at)
            .bind(step_id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = match row {
                Some((pipeline_id, name)) => {
                    let event = insert_event(&mut tx, NewEvent {
                        reason: why.clone(),
                        ..new_event(pipeline_id, Subject::Step, step_id, name, Status::Running, at)
                    })
                    .await?;
                    (StartRecord::Recorded, Some(event))
                }
                None => {
                    let mine: Option<(bool,)> = sqlx::query_as(
                        "SELECT COALESCE(s.status = 'running' AND s.attempt = $1 \
                                         AND w.lease_owner = $2, FALSE) \
                         FROM steps s JOIN workflows w ON w.id = s.workflow_id WHERE s.id = $3",
                    )
                    .bind(attempt)
                    .bind(owner)
                    .bind(step_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let record = if mine.is_some_and(|(m,)| m) {
                        StartRecord::Recorded
                    } else {
                        StartRecord::Refused
                    };
                    (record, None)
                }
            };
            tx.commit().await?;
            outcome
        });
        self.publish(event.into_iter().collect());
        Ok(record)
        })
        .await
    }

    /// Records that the backend accepted the start of `attempt`: from now on, a replica that
    /// adopts the workflow and finds nothing of the attempt knows it was lost, not unborn.
    pub async fn step_launched(&self, step_id: Uuid, attempt: u32) -> Result<(), StoreError> {
        let attempt = i32::try_from(attempt)
            .map_err(|_| StoreError::Corrupt(format!("attempt {attempt} is out of range")))?;
        self.write(async {
            on_pool!(self, pool => {
                sqlx::query(
                    "UPDATE steps SET launched = TRUE \
                     WHERE id = $1 AND attempt = $2 AND status = 'running'",
                )
                .bind(step_id)
                .bind(attempt)
                .execute(pool)
                .await?;
            });
            Ok(())
        })
        .await
    }

    /// Records a step's end (or that it was skipped or canceled before it started). A step
    /// that has already finished keeps its first end. Only the holder of the workflow's lease
    /// (`owner`) records it: a replica whose lease ran out while it followed the step may see
    /// the attempt killed by the replica that adopted it, and that is not the step's outcome.
    #[allow(clippy::too_many_arguments)]
    pub async fn step_finished(
        &self,
        pipeline_id: Uuid,
        step_id: Uuid,
        owner: &str,
        status: Status,
        exit_code: Option<i32>,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(async {
            let event = on_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                lock_pipeline(&mut *tx, pipeline_id).await?;
                let row: Option<(Uuid, String)> = sqlx::query_as(
                    "UPDATE steps SET status = $1, exit_code = $2, reason = $3, finished_at = $4 \
                     WHERE id = $5 AND status IN ('queued', 'running') \
                       AND EXISTS (SELECT 1 FROM workflows w WHERE w.id = steps.workflow_id \
                                   AND w.status = 'running' AND w.lease_owner = $6) \
                     RETURNING pipeline_id, name",
                )
                .bind(status.as_str())
                .bind(exit_code)
                .bind(reason.as_deref())
                .bind(at)
                .bind(step_id)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
                let event = match row {
                    Some((pipeline_id, name)) => Some(
                        insert_event(&mut tx, NewEvent {
                            exit_code,
                            reason: reason.clone(),
                            ..new_event(pipeline_id, Subject::Step, step_id, name, status, at)
                        })
                        .await?,
                    ),
                    None => None,
                };
                tx.commit().await?;
                event
            });
            self.publish(event.into_iter().collect());
            Ok(())
        })
        .await
    }

    /// Records a workflow's end, then what follows from it: dependent workflows become ready
    /// or are skipped, and the pipeline ends when all its workflows have. Only the holder of
    /// the workflow's lease (`owner`) records it (see [`Store::step_finished`]).
    pub async fn workflow_finished(
        &self,
        pipeline_id: Uuid,
        workflow_id: Uuid,
        owner: &str,
        status: Status,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(async {
        let now = Utc::now();
        let mut events: Vec<Event> = Vec::new();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            lock_pipeline(&mut *tx, pipeline_id).await?;
            let row: Option<(Uuid, String)> = sqlx::query_as(
                "UPDATE workflows SET status = $1, reason = $2, finished_at = $3, \
                 lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $4 AND status = 'running' AND lease_owner = $5 \
                 RETURNING pipeline_id, name",
            )
            .bind(status.as_str())
            .bind(reason.as_deref())
            .bind(now)
            .bind(workflow_id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((pipeline_id, name)) = row else {
                return Ok(());
            };
            events.push(insert_event(&mut tx, NewEvent {
                reason: reason.clone(),
                ..new_event(pipeline_id, Subject::Workflow, workflow_id, name, status, now)
            }).await?);

            // Settle dependents until nothing changes: a skipped workflow may skip others.
            loop {
                let siblings: Vec<SiblingRow> = sqlx::query_as(
                    "SELECT id, name, status, ready, plan FROM workflows \
                     WHERE pipeline_id = $1 ORDER BY position",
                )
                .bind(pipeline_id)
                .fetch_all(&mut *tx)
                .await?;
                let mut changed = false;
                for w in siblings.iter().filter(|w| w.status == "queued" && !w.ready) {
                    let Some(plan) = &w.plan.0 else { continue };
                    match dependency_outcome(plan, &siblings) {
                        Readiness::Waiting => {}
                        Readiness::Ready => {
                            sqlx::query("UPDATE workflows SET ready = TRUE WHERE id = $1")
                                .bind(w.id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        Readiness::Skip(why) => {
                            changed = true;
                            sqlx::query(
                                "UPDATE workflows SET status = 'skipped', reason = $1, finished_at = $2 \
                                 WHERE id = $3",
                            )
                            .bind(&why)
                            .bind(now)
                            .bind(w.id)
                            .execute(&mut *tx)
                            .await?;
                            let steps: Vec<(Uuid, String)> = sqlx::query_as(
                                "UPDATE steps SET status = 'skipped', reason = $1, finished_at = $2 \
                                 WHERE workflow_id = $3 AND status = 'queued' RETURNING id, name",
                            )
                            .bind(&why)
                            .bind(now)
                            .bind(w.id)
                            .fetch_all(&mut *tx)
                            .await?;
                            for (step_id, step_name) in steps {
                                events.push(insert_event(&mut tx, NewEvent {
                                    reason: Some(why.clone()),
                                    ..new_event(pipeline_id, Subject::Step, step_id, step_name, Status::Skipped, now)
                                }).await?);
                            }
                            events.push(insert_event(&mut tx, NewEvent {
                                reason: Some(why.clone()),
                                ..new_event(pipeline_id, Subject::Workflow, w.id, w.name.clone(), Status::Skipped, now)
                            }).await?);
                        }
                    }
                }
                if !changed {
                    break;
                }
            }

            let statuses: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT name, status, reason FROM workflows WHERE pipeline_id = $1 ORDER BY position",
            )
            .bind(pipeline_id)
            .fetch_all(&mut *tx)
            .await?;
            if let Some((final_status, final_reason)) = pipeline_outcome(&statuses) {
                let ended: Option<(String,)> = sqlx::query_as(
                    "UPDATE pipelines SET status = $1, reason = $2, finished_at = $3, updated_at = $3 \
                     WHERE id = $4 AND status IN ('queued', 'running') RETURNING name",
                )
                .bind(final_status.as_str())
                .bind(final_reason.as_deref())
                .bind(now)
                .bind(pipeline_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((name,)) = ended {
                    events.push(insert_event(&mut tx, NewEvent {
                        reason: final_reason,
                        ..new_event(pipeline_id, Subject::Pipeline, pipeline_id, name, final_status, now)
                    }).await?);
                }
            }
            tx.commit().await?;
        });
        self.publish(events);
        Ok(())
        })
        .await
    }
}

impl Store {
    /// The workflows not finished yet: what the reaper must leave alone.
    pub async fn unfinished_workflows(
        &self,
    ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        self.read(async {
            let rows: Vec<(Uuid,)> = on_pool!(self, pool => {
                sqlx::query_as("SELECT id FROM workflows WHERE status IN ('queued', 'running')")
                    .fetch_all(pool)
                    .await?
            });
            Ok(rows.into_iter().map(|(id,)| id).collect())
        })
        .await
    }

    /// How many workflows are queued and running, for `/metrics`.
    pub async fn workflow_counts(&self) -> Result<Vec<(Status, i64)>, StoreError> {
        self.read(async {
            let rows: Vec<(String, i64)> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT status, COUNT(*) FROM workflows \
                     WHERE status IN ('queued', 'running') GROUP BY status",
                )
                .fetch_all(pool)
                .await?
            });
            let mut counts = vec![(Status::Queued, 0), (Status::Running, 0)];
            for (status, n) in rows {
                if let Some(slot) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                    slot.1 = n;
                }
            }
            Ok(counts)
        })
        .await
    }
}

impl Store {
    /// The workflows running and waiting per concurrency group, for `/metrics`: the `shown`
    /// groups (at least 1) with the most workflows one by one, the others summed. One
    /// statement, so that the sum of the others agrees with the groups shown.
    pub async fn concurrency_counts(&self, shown: usize) -> Result<ConcurrencyCounts, StoreError> {
        self.read(async {
            let rows: Vec<GroupCountRow> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT scope, grp, running, waiting, \
                       CAST(SUM(running) OVER () AS BIGINT) AS all_running, \
                       CAST(SUM(waiting) OVER () AS BIGINT) AS all_waiting \
                     FROM (SELECT concurrency_scope AS scope, concurrency_group AS grp, \
                             CAST(SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS BIGINT) AS running, \
                             CAST(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS BIGINT) AS waiting \
                           FROM workflows WHERE concurrency_group IS NOT NULL \
                             AND (status = 'running' OR (status = 'queued' AND ready)) \
                           GROUP BY concurrency_scope, concurrency_group) g \
                     ORDER BY running + waiting DESC, scope, grp LIMIT $1",
                )
                .bind(i64::try_from(shown.max(1)).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?
            });
            let totals = rows
                .first()
                .map_or((0, 0), |r| (r.all_running, r.all_waiting));
            let groups: Vec<GroupCount> = rows
                .into_iter()
                .map(|r| GroupCount {
                    scope: r.scope,
                    group: r.grp,
                    running: r.running,
                    waiting: r.waiting,
                })
                .collect();
            let others = (
                totals.0 - groups.iter().map(|g| g.running).sum::<i64>(),
                totals.1 - groups.iter().map(|g| g.waiting).sum::<i64>(),
            );
            Ok(ConcurrencyCounts {
                others: (others != (0, 0)).then_some(others),
                groups,
            })
        })
        .await
    }
}

#[derive(sqlx::FromRow)]
struct GroupCountRow {
    scope: String,
    grp: String,
    running: i64,
    waiting: i64,
    all_running: i64,
    all_waiting: i64,
}

enum Readiness {
    Waiting,
    Ready,
    Skip(String),
}

/// Whether a workflow may run now that some of its siblings have finished (DESIGN §5).
fn dependency_outcome(plan: &WorkflowPlan, siblings: &[SiblingRow]) -> Readiness {
    let deps: Vec<&SiblingRow> = siblings
        .iter()
        .filter(|s| plan.depends_on.contains(&s.name))
        .collect();
    let statuses: Vec<Status> = deps
        .iter()
        .filter_map(|d| Status::parse(&d.status))
        .collect();
    if statuses.len() < deps.len() || statuses.iter().any(|s| !s.is_finished()) {
        return Readiness::Waiting;
    }
    let failed: Vec<&str> = deps
        .iter()
        .filter(|d| !matches!(d.status.as_str(), "success" | "skipped"))
        .map(|d| d.name.as_str())
        .collect();
    let outcome = if failed.is_empty() {
        pipeline::Conclusion::Success
    } else {
        pipeline::Conclusion::Failure
    };
    if plan.runs_on.contains(&outcome) {
        Readiness::Ready
    } else if failed.is_empty() {
        // It runs only after a failure (`when.status: [failure]`), and none came.
        let mut names: Vec<&str> = deps.iter().map(|d| d.name.as_str()).collect();
        names.dedup();
        Readiness::Skip(format!(
            "skipped: it runs only when a workflow it depends on fails (its status condition is [failure]), and {} did not fail",
            names.join(", ")
        ))
    } else {
        let mut names = failed;
        names.dedup();
        Readiness::Skip(format!(
            "skipped: workflow {} did not succeed, and this workflow runs only when the workflows it depends on succeed (add failure to its when.status to run it anyway)",
            names.join(", ")
        ))
    }
}

/// The pipeline's status once every workflow has finished: an error outranks a failure,
/// which outranks a cancel.
fn pipeline_outcome(
    workflows: &[(String, String, Option<String>)],
) -> Option<(Status, Option<String>)> {
    let statuses: Vec<Status> = workflows
        .iter()
        .filter_map(|(_, s, _)| Status::parse(s))
        .collect();
    if statuses.len() < workflows.len() || statuses.iter().any(|s| !s.is_finished()) {
        return None;
    }
    for worst in [Status::Error, Status::Failure, Status::Canceled] {
        if let Some((name, _, reason)) = workflows
            .iter()
            .find(|(_, s, _)| Status::parse(s) == Some(worst))
        {
            let why = match reason {
                Some(r) => format!("workflow {name}: {r}"),
                None => format!("workflow {name} ended with {worst}"),
            };
            return Some((worst, Some(why)));
        }
    }
    if statuses.iter().all(|s| *s == Status::Skipped) {
        return Some((Status::Skipped, Some("every workflow was skipped".into())));
    }
    Some((Status::Success, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(name: &str, status: &str) -> (String, String, Option<String>) {
        (name.into(), status.into(), None)
    }

    #[test]
    fn pipeline_outcome_ranks_errors_first() {
        assert_eq!(
            pipeline_outcome(&[wf("a", "success"), wf("b", "running")]),
            None
        );
        assert_eq!(
            pipeline_outcome(&[wf("a", "success"), wf("b", "skipped")]),
            Some((Status::Success, None))
        );
        assert_eq!(
            pipeline_outcome(&[wf("a", "failure"), wf("b", "error")]).map(|o| o.0),
            Some(Status::Error)
        );
        assert_eq!(
            pipeline_outcome(&[wf("a", "canceled"), wf("b", "failure")]).map(|o| o.0),
            Some(Status::Failure)
        );
    }
}
