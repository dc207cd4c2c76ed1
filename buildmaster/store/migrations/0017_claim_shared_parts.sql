-- The claims' shared parts, each in one function: the single claim (buildqueue_candidate,
-- 0014) and the shared one (buildqueue_claim_many, 0016) asked the queue the same three
-- questions in copies of the same queries, one job at a time in the first and up to n in
-- the second. Behaviour unchanged: the jobs chosen, their order and the rows locked are
-- what the copies gave. PL/pgSQL keeps each query's plan for the session (an SQL function
-- that locks rows would be planned again at every call).

-- The owners with work of the kind (waiting or on builders), at most n of them: whether
-- there is a choice between owners at all (n = 2), and the one owner when there is none.
CREATE FUNCTION buildqueue_owners_with_work(processors integer[], virt boolean, n integer)
RETURNS integer[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    owners integer[];
BEGIN
    SELECT array_agg(w.owner) INTO owners FROM (
        SELECT s.owner FROM shareusage_stripe s
        WHERE s.processor = ANY(processors) AND s.virtualized = virt
        GROUP BY s.owner HAVING sum(s.waiting) > 0 OR sum(s.running) > 0
        LIMIT n) w;
    RETURN owners;
END;
$$;

-- Up to n aged jobs of the kind (waiting past aging_bound - aging_slack), the longest
-- waiting first, locked (SKIP LOCKED: another claim's are passed over), none of avoid.
CREATE FUNCTION buildqueue_aged(processors integer[], virt boolean, avoid integer[],
    n integer)
RETURNS integer[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    jobs integer[];
BEGIN
    SELECT coalesce(array_agg(c.id ORDER BY c.datecreated, c.id), '{}') INTO jobs FROM (
        SELECT c.id, c.datecreated FROM unnest(processors) AS p(processor)
        CROSS JOIN LATERAL (
            SELECT q.id, q.datecreated FROM buildqueue q
            WHERE q.status = 0 AND q.builder IS NULL
              AND q.processor = p.processor AND q.virtualized = virt
              AND q.datecreated <= now()
                  - (SELECT make_interval(secs => aging_bound - aging_slack) FROM fairshare)
              AND q.id <> ALL(avoid)
            ORDER BY q.datecreated, q.id
            LIMIT n FOR UPDATE SKIP LOCKED) c
        ORDER BY c.datecreated, c.id LIMIT n) c;
    RETURN jobs;
END;
$$;

-- Up to n of an owner's waiting jobs of the kind, the best by score first, locked (SKIP
-- LOCKED), none of avoid.
CREATE FUNCTION buildqueue_best_of(processors integer[], virt boolean, owner integer,
    avoid integer[], n integer)
RETURNS integer[] LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    jobs integer[];
BEGIN
    SELECT coalesce(array_agg(c.id ORDER BY c.lastscore DESC, c.id), '{}') INTO jobs FROM (
        SELECT c.id, c.lastscore FROM unnest(processors) AS p(processor)
        CROSS JOIN LATERAL (
            SELECT q.id, q.lastscore FROM buildqueue q
            WHERE q.status = 0 AND q.builder IS NULL
              AND q.processor = p.processor AND q.virtualized = virt
              AND q.shareowner = owner AND q.id <> ALL(avoid)
            ORDER BY q.lastscore DESC, q.id
            LIMIT n FOR UPDATE SKIP LOCKED) c
        ORDER BY c.lastscore DESC, c.id LIMIT n) c;
    RETURN jobs;
END;
$$;

-- Each owner with work of the kind: its weight, demand (waiting and on builders), jobs on
-- builders, jobs waiting and decayed usage (each processor's clamped at 0, as the
-- shareusage view does), in fairshare.share_level's order (demand per weight, then id).
CREATE FUNCTION fairshare_owners(processors integer[], virt boolean, cfg fairshare,
    OUT owners integer[], OUT weights float8[], OUT demands float8[], OUT runs float8[],
    OUT waits integer[], OUT usages float8[])
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT array_agg(u.owner ORDER BY u.d / u.w, u.owner),
        array_agg(u.w ORDER BY u.d / u.w, u.owner), array_agg(u.d ORDER BY u.d / u.w, u.owner),
        array_agg(u.r ORDER BY u.d / u.w, u.owner),
        array_agg(u.waiting ORDER BY u.d / u.w, u.owner),
        array_agg(u.usage ORDER BY u.d / u.w, u.owner)
    INTO owners, weights, demands, runs, waits, usages
    FROM (
        SELECT p.owner, max(p.w) AS w, sum(p.waiting + p.running)::float8 AS d,
            sum(p.running)::float8 AS r, sum(p.waiting)::integer AS waiting,
            sum(p.usage) AS usage
        FROM (
            SELECT s.owner, coalesce(max(w.weight), cfg.default_weight) AS w,
                sum(s.waiting) AS waiting, sum(s.running) AS running,
                greatest(0, sum(s.usage * power(0.5,
                    greatest(0, extract(epoch FROM now() - s.stamp)) / cfg.half_life)))
                    AS usage
            FROM shareusage_stripe s LEFT JOIN shareweight w ON w.owner = s.owner
            WHERE s.processor = ANY(processors) AND s.virtualized = virt
            GROUP BY s.owner, s.processor) p
        GROUP BY p.owner HAVING sum(p.waiting) > 0 OR sum(p.running) > 0) u;
END;
$$;

-- As in 0014, from the owners' numbers above (the usage is not needed for the reserve).
CREATE OR REPLACE FUNCTION fairshare_reserve(processors integer[], virt boolean,
    OUT builders integer, OUT idle integer, OUT reserve integer, OUT level float8,
    OUT held integer[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg fairshare;
    o record;
BEGIN
    SELECT * INTO cfg FROM fairshare;
    SELECT * INTO o FROM fairshare_owners(processors, virt, cfg);
    SELECT * INTO builders, idle, reserve, level, held
    FROM fairshare_reserve_of(processors, virt, cfg.reserve, o.owners, o.weights, o.demands,
        o.runs);
END;
$$;

-- As in 0014, through the parts above.
CREATE OR REPLACE FUNCTION buildqueue_candidate(processors integer[], virt boolean,
                                                avoid integer[])
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg fairshare;
    owners integer[];
    o record;
    held_back integer[];
    turns integer[];
    turn integer;
    found integer;
BEGIN
    found := (buildqueue_aged(processors, virt, avoid, 1))[1];
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    owners := buildqueue_owners_with_work(processors, virt, 2);
    IF owners IS NULL THEN
        RETURN NULL;  -- no job of the kind waits
    END IF;
    IF cardinality(owners) = 1 THEN
        turns := owners;
    ELSE
        SELECT * INTO cfg FROM fairshare;
        SELECT * INTO o FROM fairshare_owners(processors, virt, cfg);
        SELECT r.held INTO held_back
        FROM fairshare_reserve_of(processors, virt, cfg.reserve, o.owners, o.weights,
            o.demands, o.runs) r;
        -- the deficits among the owners with waiting jobs
        SELECT array_agg(d.owner ORDER BY d.deficit DESC, d.owner) INTO turns FROM (
            SELECT u.owner, u.w / sum(u.w) OVER ()
                - coalesce(u.usage / nullif(sum(u.usage) OVER (), 0), 0) AS deficit
            FROM unnest(o.owners, o.weights, o.waits, o.usages) AS u(owner, w, waiting, usage)
            WHERE u.waiting > 0) d
        WHERE d.owner <> ALL(held_back);
    END IF;
    FOREACH turn IN ARRAY coalesce(turns, '{}') LOOP
        found := (buildqueue_best_of(processors, virt, turn, avoid, 1))[1];
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

-- As in 0016, through the parts above.
CREATE OR REPLACE FUNCTION buildqueue_claim_many(builders integer[], processors integer[],
    virt boolean)
RETURNS SETOF buildqueue LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    left_ integer[] := builders;
    holders jsonb;  -- chroot (as text) -> the asking builders that hold it, in asking order
    owners integer[];
    jobs integer[];
    chroots bigint[];
    given integer[] := '{}';
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
    owners := buildqueue_owners_with_work(processors, virt, 2);
    IF cardinality(owners) = 1 THEN
        -- the aged jobs, longest waiting first, then the owner's best by score (locked)
        jobs := buildqueue_aged(processors, virt, '{}', cardinality(builders));
        IF cardinality(jobs) < cardinality(builders) THEN
            jobs := jobs || buildqueue_best_of(processors, virt, owners[1], jobs,
                cardinality(builders) - cardinality(jobs));
        END IF;
        IF cardinality(jobs) = 0 THEN
            RETURN;
        END IF;
        SELECT array_agg(das.chroot ORDER BY j.n) INTO chroots
        FROM unnest(jobs) WITH ORDINALITY AS j(id, n) JOIN buildqueue q ON q.id = j.id
            JOIN build bd ON bd.id = q.build JOIN distroarchseries das ON das.id = bd.distroarchseries;
        FOR i IN 1 .. cardinality(jobs) LOOP
            chosen := coalesce(buildqueue_first_holder(holders, chroots[i], left_), left_[1]);
            left_ := array_remove(left_, chosen);
            given := given || chosen;
        END LOOP;
        RETURN QUERY UPDATE buildqueue q SET builder = a.builder, status = 1
            FROM unnest(jobs, given) AS a(job, builder)
            WHERE q.id = a.job
            RETURNING q.*;
        RETURN;
    END IF;
    -- two owners or more: one claim after the other, each charge counting for the next
    WHILE cardinality(left_) > 0 LOOP
        job := buildqueue_candidate(processors, virt, '{}');  -- locked
        EXIT WHEN job IS NULL;
        chosen := NULL;
        IF holders IS NOT NULL THEN
            SELECT das.chroot INTO job_chroot FROM buildqueue q JOIN build bd ON bd.id = q.build
                JOIN distroarchseries das ON das.id = bd.distroarchseries
            WHERE q.id = job;
            chosen := buildqueue_first_holder(holders, job_chroot, left_);
        END IF;
        chosen := coalesce(chosen, left_[1]);
        left_ := array_remove(left_, chosen);
        UPDATE buildqueue q SET builder = chosen, status = 1 WHERE q.id = job
        RETURNING q.* INTO claimed;
        RETURN NEXT claimed;
    END LOOP;
END;
$$;
