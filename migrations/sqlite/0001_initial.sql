-- Pipelines, their workflows and steps, log lines and events (DESIGN §4).
-- Secret values live only in sealed_secrets, encrypted by the service.

CREATE TABLE pipelines (
    id               BLOB PRIMARY KEY,
    name             TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    submission       TEXT NOT NULL,
    sealed_secrets   BLOB,
    labels           TEXT NOT NULL,
    warnings         TEXT NOT NULL,
    namespace        TEXT,
    timeout_seconds  BIGINT,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    retry_of         BLOB REFERENCES pipelines (id) ON DELETE SET NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    event_count      BIGINT NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL
);
CREATE INDEX pipelines_status_id ON pipelines (status, id);

CREATE TABLE pipeline_labels (
    pipeline_id BLOB NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, key)
);
CREATE INDEX pipeline_labels_key_value ON pipeline_labels (key, value);

CREATE TABLE workflows (
    id               BLOB PRIMARY KEY,
    pipeline_id      BLOB NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    name             TEXT NOT NULL,
    matrix           TEXT NOT NULL,
    plan             TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    -- Whether every workflow this one depends on has finished in a way that lets it run.
    ready            INTEGER NOT NULL,
    -- How often a replica claimed it; above 1 the claim was a takeover of an expired lease.
    claims           INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
);
CREATE INDEX workflows_pipeline ON workflows (pipeline_id, position);
-- The engine claims queued workflows and takes over expired leases through this index.
CREATE INDEX workflows_claim ON workflows (status, ready, lease_expires_at);

CREATE TABLE steps (
    id          BLOB PRIMARY KEY,
    workflow_id BLOB NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    pipeline_id BLOB NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    exit_code   INTEGER,
    attempt     INTEGER NOT NULL DEFAULT 1,
    started_at  TEXT,
    finished_at TEXT,
    UNIQUE (workflow_id, position)
);
CREATE INDEX steps_pipeline ON steps (pipeline_id);

-- No foreign key to steps: a per-row check would cost more than the insert itself on the
-- hottest write path, and only the engine writes here, for steps it holds.
CREATE TABLE log_lines (
    step_id BLOB NOT NULL,
    number  BIGINT NOT NULL,
    ts      TEXT NOT NULL,
    text    TEXT NOT NULL,
    PRIMARY KEY (step_id, number)
);

-- Events are numbered per pipeline (pipelines.event_count), in commit order: every
-- transaction that records one locks its pipeline's row first.
CREATE TABLE events (
    pipeline_id BLOB NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    subject     TEXT NOT NULL,
    subject_id  BLOB NOT NULL,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, seq)
);
