-- Workflow concurrency (issue 13): `concurrency: N` or `{limit, group}` lets at most N
-- workflows of a group run at once across replicas. The claim counts in SQL, so the group and
-- its limit are columns of their own; all three are NULL for a workflow without `concurrency`
-- (every workflow stored before this migration).
--   concurrency_scope: the submission's CI_REPO ('' without one): the same group name in two
--                      repositories is two groups, as Woodpecker scopes groups by repository.
--   concurrency_group: the group, after ${NAME} substitution; the workflow's name by default.
--   concurrency_limit: how many of the group may run at once, as this workflow declares it.
ALTER TABLE workflows ADD COLUMN concurrency_scope TEXT;
ALTER TABLE workflows ADD COLUMN concurrency_group TEXT;
ALTER TABLE workflows ADD COLUMN concurrency_limit INTEGER;
-- A claim counts the running and queued workflows of one group, in creation order; the index
-- holds only workflows that have a group.
CREATE INDEX workflows_concurrency
    ON workflows (concurrency_scope, concurrency_group, status, created_at, pipeline_id, position)
    WHERE concurrency_group IS NOT NULL;
