-- Pipelines, their workflows and steps, log lines and events (DESIGN §4).
-- Secret values live only in sealed_secrets, encrypted by the service.

CREATE TABLE pipelines (
    id               UUID PRIMARY KEY,
    name             TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    submission       JSONB NOT NULL,
    sealed_secrets   BYTEA,
    labels           JSONB NOT NULL,
    warnings         JSONB NOT NULL,
    namespace        TEXT,
    timeout_seconds  BIGINT,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    retry_of         UUID REFERENCES pipelines (id) ON DELETE SET NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    event_count      BIGINT NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX pipelines_status_id ON pipelines (status, id);

CREATE TABLE pipeline_labels (
    pipeline_id UUID NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, key)
);
CREATE INDEX pipeline_labels_key_value ON pipeline_labels (key, value);

CREATE TABLE workflows (
    id               UUID PRIMARY KEY,
    pipeline_id      UUID NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    name             TEXT NOT NULL,
    matrix           JSONB NOT NULL,
    plan             JSONB NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    -- Whether every workflow this one depends on has finished in a way that lets it run.
    ready            BOOLEAN NOT NULL,
    -- How often a replica claimed it; above 1 the claim was a takeover of an expired lease.
    claims           INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX workflows_pipeline ON workflows (pipeline_id, position);
-- The engine claims queued workflows and takes over expired leases through this index.
CREATE INDEX workflows_claim ON workflows (status, ready, lease_expires_at);

CREATE TABLE steps (
    id          UUID PRIMARY KEY,
    workflow_id UUID NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    pipeline_id UUID NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    exit_code   INTEGER,
    attempt     INTEGER NOT NULL DEFAULT 1,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    UNIQUE (workflow_id, position)
);
CREATE INDEX steps_pipeline ON steps (pipeline_id);

-- No foreign key to steps: a per-row check would cost more than the insert itself on the
-- hottest write path, and only the engine writes here, for steps it holds.
CREATE TABLE log_lines (
    step_id UUID NOT NULL,
    number  BIGINT NOT NULL,
    ts      TIMESTAMPTZ NOT NULL,
    text    TEXT NOT NULL,
    PRIMARY KEY (step_id, number)
);

-- Events are numbered per pipeline (pipelines.event_count), in commit order: every
-- transaction that records one locks its pipeline's row first.
CREATE TABLE events (
    pipeline_id UUID NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    subject     TEXT NOT NULL,
    subject_id  UUID NOT NULL,
    status      TEXT NOT NULL,
    payload     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pipeline_id, seq)
);
