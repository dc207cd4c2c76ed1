-- The claim's chroot affinity, with the asking builders' caches read once per call.
--
-- 0010's buildqueue_claim_many still joined the builders asking with their rows for every
-- job it claimed, to find the first one holding the job's chroot: 0.47 ms of PostgreSQL per
-- claimed job with some thirty builders asking (a saturated master's shared claim), as
-- much as the claim's own UPDATE. The builders' chroots are now read once per call, as a
-- map from a chroot to the builders holding it in asking order, and each job looks its
-- chroot up there.

CREATE OR REPLACE FUNCTION buildqueue_claim_many(builders integer[], processors integer[],
    virt boolean)
RETURNS SETOF buildqueue LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    left_ integer[] := builders;
    holders jsonb;  -- chroot (as text) -> the asking builders that hold it, in asking order
    job integer;
    job_chroot bigint;
    chosen integer;
    claimed buildqueue;
BEGIN
    SELECT jsonb_object_agg(h.chroot::text, h.ids) INTO holders FROM (
        SELECT c.chroot, jsonb_agg(r.b ORDER BY r.n) AS ids
        FROM unnest(builders) WITH ORDINALITY AS r(b, n) JOIN builder br ON br.id = r.b
        CROSS JOIN LATERAL unnest(br.chroots) AS c(chroot)
        GROUP BY c.chroot) h;
    WHILE cardinality(left_) > 0 LOOP
        job := buildqueue_candidate(processors, virt, '{}');  -- locked
        EXIT WHEN job IS NULL;
        chosen := NULL;
        IF holders IS NOT NULL THEN
            SELECT das.chroot INTO job_chroot FROM buildqueue q JOIN build bd ON bd.id = q.build
                JOIN distroarchseries das ON das.id = bd.distroarchseries
            WHERE q.id = job;
            IF job_chroot IS NOT NULL THEN
                SELECT x.b::integer INTO chosen
                FROM jsonb_array_elements_text(holders -> job_chroot::text)
                    WITH ORDINALITY AS x(b, n)
                WHERE x.b::integer = ANY(left_)
                ORDER BY x.n LIMIT 1;
            END IF;
        END IF;
        chosen := coalesce(chosen, left_[1]);
        left_ := array_remove(left_, chosen);
        UPDATE buildqueue q SET builder = chosen, status = 1 WHERE q.id = job
        RETURNING q.* INTO claimed;
        RETURN NEXT claimed;
    END LOOP;
END;
$$;
