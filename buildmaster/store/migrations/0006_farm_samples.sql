-- The farm's own counts, one row a minute, for the pages' picture of the last hours (builds
-- finished per minute, queue depth): written by the masters' samplers
-- (buildmaster/web/samples.py), pruned by them after two days. Several masters on one
-- database write the same rows: the first one's queue depth stays, the finished count is
-- recounted from the builds (the same answer whoever counts).
CREATE TABLE farm_sample (
    minute   timestamptz PRIMARY KEY,
    -- builds whose date_finished falls in [minute, minute + 1 minute)
    finished integer NOT NULL,
    -- waiting (not suspended, not running) and running jobs when the minute was sampled
    waiting  integer NOT NULL,
    running  integer NOT NULL
);
