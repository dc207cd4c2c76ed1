-- Forgetting the owners that have had nothing to do for a long time.
--
-- Every owner that ever had a job of a kind kept its usage rows (up to one per stripe)
-- for ever, and the claims read all the rows of their kind (the owners with work, their
-- usage): on a farm with thousands of PPA owners, most of them long idle, every PPA claim
-- went through all of them. An owner with no job of the kind waiting or on a builder, whose
-- rows have not changed for FORGET_AFTER half-lives (20: its usage has decayed to less than
-- a millionth of what it was), is now forgotten: its rows are deleted. When it uploads
-- again it starts from no usage, which it nearly had anyway.
--
-- Without a lock on the claims: the rows of the owners found idle are locked (in key order,
-- as every writer of the stripes takes them) and checked again before they go, so a job
-- queued for that owner meanwhile is either seen (the owner is kept) or lands after the
-- delete in a row of its own (the usage trigger inserts the row it does not find).

CREATE FUNCTION shareusage_forget() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    idle_for interval := (SELECT make_interval(secs => 20 * half_life) FROM fairshare);
    forgotten integer;
BEGIN
    WITH idle AS (
        SELECT s.processor, s.virtualized, s.owner FROM shareusage_stripe s
        GROUP BY 1, 2, 3
        HAVING sum(s.waiting) = 0 AND sum(s.running) = 0 AND max(s.stamp) < now() - idle_for),
    locked AS (
        SELECT s.processor, s.virtualized, s.owner, s.waiting, s.running, s.stamp
        FROM shareusage_stripe s JOIN idle i USING (processor, virtualized, owner)
        ORDER BY s.processor, s.virtualized, s.owner, s.stripe
        FOR UPDATE OF s),
    still AS (
        SELECT l.processor, l.virtualized, l.owner FROM locked l
        GROUP BY 1, 2, 3
        HAVING sum(l.waiting) = 0 AND sum(l.running) = 0 AND max(l.stamp) < now() - idle_for),
    gone AS (
        DELETE FROM shareusage_stripe s USING still t
        WHERE (s.processor, s.virtualized, s.owner) = (t.processor, t.virtualized, t.owner)
        RETURNING s.processor, s.virtualized, s.owner)
    SELECT count(DISTINCT (g.processor, g.virtualized, g.owner)) INTO forgotten FROM gone g;
    RETURN forgotten;
END;
$$;
