-- The claim when one owner alone has work of a kind.
--
-- Trusted builders take the primary archive's builds, which belong to one owner, so for
-- those kinds of builder there is never a share to weigh: the deficits of the waiting owners
-- (the usage decayed per stripe, window sums) and the reserve (which keeps builders only for
-- a second owner) give that owner's best job every time, at about a millisecond of
-- PostgreSQL per claim. When the stripes show one owner with jobs of the kind waiting or on
-- builders, and nobody else, the claim takes that owner's best job (score, then id) at
-- once: what the full rules give then (buildmaster/fairshare.py), without computing them.
-- Aged jobs still go first, as before.

CREATE OR REPLACE FUNCTION buildqueue_candidate(processors integer[], virt boolean,
                                                avoid integer[])
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found integer;
    held_back integer[];
    owners integer[];
BEGIN
    SELECT c.id INTO found FROM unnest(processors) AS p(processor)
    CROSS JOIN LATERAL (
        SELECT q.id, q.datecreated FROM buildqueue q
        WHERE q.status = 0 AND q.builder IS NULL
          AND q.processor = p.processor AND q.virtualized = virt
          AND q.datecreated <= now()
              - (SELECT make_interval(secs => aging_bound - aging_slack) FROM fairshare)
          AND q.id <> ALL(avoid)
        ORDER BY q.datecreated, q.id
        LIMIT 1 FOR UPDATE SKIP LOCKED) c
    ORDER BY c.datecreated, c.id LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    -- the owners with work of the kind (waiting or on builders; two are enough to know)
    SELECT array_agg(w.owner) INTO owners FROM (
        SELECT s.owner FROM shareusage_stripe s
        WHERE s.processor = ANY(processors) AND s.virtualized = virt
        GROUP BY s.owner HAVING sum(s.waiting) > 0 OR sum(s.running) > 0
        LIMIT 2) w;
    IF owners IS NULL THEN
        RETURN NULL;  -- no job of the kind waits
    END IF;
    IF cardinality(owners) = 1 THEN
        SELECT c.id INTO found FROM unnest(processors) AS p(processor)
        CROSS JOIN LATERAL (
            SELECT q.id, q.lastscore FROM buildqueue q
            WHERE q.status = 0 AND q.builder IS NULL
              AND q.processor = p.processor AND q.virtualized = virt
              AND q.shareowner = owners[1] AND q.id <> ALL(avoid)
            ORDER BY q.lastscore DESC, q.id
            LIMIT 1 FOR UPDATE SKIP LOCKED) c
        ORDER BY c.lastscore DESC, c.id LIMIT 1;
        RETURN found;
    END IF;
    SELECT r.held INTO held_back FROM fairshare_reserve(processors, virt) r;
    SELECT c.id INTO found FROM (
        SELECT d.owner, d.deficit FROM (
            SELECT u.owner,
                u.weight / sum(u.weight) OVER ()
                    - coalesce(u.usage / nullif(sum(u.usage) OVER (), 0), 0) AS deficit
            FROM (
                SELECT s.owner, max(coalesce(w.weight, f.default_weight)) AS weight,
                    sum(s.usage * power(0.5,
                        greatest(0, extract(epoch FROM now() - s.stamp)) / f.half_life)) AS usage
                FROM shareusage s CROSS JOIN fairshare f
                    LEFT JOIN shareweight w ON w.owner = s.owner
                WHERE s.processor = ANY(processors) AND s.virtualized = virt
                  AND s.owner IN (SELECT a.owner FROM shareusage a
                      WHERE a.processor = ANY(processors) AND a.virtualized = virt
                        AND a.waiting > 0)
                GROUP BY s.owner) u) d
        WHERE d.owner <> ALL(held_back)
        ORDER BY d.deficit DESC, d.owner) o
    CROSS JOIN LATERAL (
        SELECT c.id FROM unnest(processors) AS p(processor)
        CROSS JOIN LATERAL (
            SELECT q.id, q.lastscore FROM buildqueue q
            WHERE q.status = 0 AND q.builder IS NULL
              AND q.processor = p.processor AND q.virtualized = virt
              AND q.shareowner = o.owner AND q.id <> ALL(avoid)
            ORDER BY q.lastscore DESC, q.id
            LIMIT 1 FOR UPDATE SKIP LOCKED) c
        ORDER BY c.lastscore DESC, c.id LIMIT 1) c
    LIMIT 1;
    RETURN found;
END;
$$;
