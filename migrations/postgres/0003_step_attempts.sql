-- Exactly-once start (issue 11): a step's row says which attempt was started last and whether
-- the backend accepted that start. The start of attempt N is committed before the backend is
-- asked to start it; a replica that adopts the workflow asks the backend about attempt N
-- before it starts anything.
--   attempt:  attempts started so far (0 while the step never started).
--   launched: the backend accepted the start of `attempt`.
ALTER TABLE steps ALTER COLUMN attempt SET DEFAULT 0;
ALTER TABLE steps ADD COLUMN launched BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE steps SET attempt = 0 WHERE started_at IS NULL;
-- Started by an earlier version, which recorded the start beside the spawn: whether the
-- backend has it is unknown, so the adopting replica treats it as launched (asks, and stops
-- what is left before it runs the step again).
UPDATE steps SET launched = TRUE WHERE started_at IS NOT NULL;
