-- The claim of a PPA job: the kind's owners read twice instead of four times, and the usage
-- row updated in place.
--
-- A claim that had to choose between owners read the kind's usage stripes four times (the
-- owners with work, the reserve, the deficits through the shareusage view, and the view
-- again for the owners with waiting jobs); it now reads them twice (whether more than one
-- owner has work, then each owner's numbers), and the reserve and the deficits are worked
-- out from that second read (fairshare_reserve_of). The rules are unchanged
-- (buildmaster/fairshare.py).
--
-- The usage row trigger charged a claim through shareusage_add (a function call, then
-- INSERT ... ON CONFLICT DO UPDATE); the row of the session's stripe nearly always exists,
-- so the trigger now updates it itself and calls shareusage_add only when it is not there
-- yet. (The gain is small: 0.19 ms a claim against 0.23 before, within the noise of the
-- loaded runs it was measured in.)

-- The reserve (fraction: fairshare.reserve) from the owners with work of the kind, in
-- fairshare.share_level's order (demand per weight, then id): their weights, demands
-- (waiting and running jobs) and jobs running. As fairshare_reserve (0011) computed it
-- after reading them.
CREATE FUNCTION fairshare_reserve_of(processors integer[], virt boolean, fraction float8,
    owners integer[], weights float8[], demands float8[], runs float8[],
    OUT builders integer, OUT idle integer, OUT reserve integer, OUT level float8,
    OUT held integer[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    on_builders float8 := 0;
    capacity float8;
    total_w float8 := 0;
    before_d float8 := 0;
    before_w float8 := 0;
    l float8;
BEGIN
    held := '{}';
    reserve := 0;
    IF fraction = 0 OR coalesce(cardinality(owners), 0) < 2 THEN
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(owners) LOOP
        on_builders := on_builders + runs[i];
        total_w := total_w + weights[i];
    END LOOP;
    SELECT count(*) INTO builders
    FROM builder br
    WHERE br.virtualized = virt AND br.builderok AND br.active AND NOT br.manual
      AND br.id IN (SELECT bp.builder FROM builderprocessor bp WHERE bp.processor = ANY(processors));
    idle := greatest(0, builders - on_builders);
    reserve := CASE WHEN builders < 2 THEN 0
        ELSE least(builders - 1, greatest(1, floor(fraction * builders)::integer)) END;
    IF reserve = 0 OR idle > reserve THEN
        RETURN;
    END IF;
    -- the max-min level of the shares of the builders beyond the reserve: the first owner
    -- whose demand per weight reaches what is left for it and those after it sets it
    capacity := builders - reserve;
    level := 'Infinity';
    FOR i IN 1 .. cardinality(owners) LOOP
        l := (capacity - before_d) / (total_w - before_w);
        IF demands[i] >= l * weights[i] THEN
            level := l;
            EXIT;
        END IF;
        before_d := before_d + demands[i];
        before_w := before_w + weights[i];
    END LOOP;
    SELECT coalesce(array_agg(owners[i] ORDER BY owners[i]), '{}') INTO held
    FROM generate_subscripts(owners, 1) AS i WHERE runs[i] >= level * weights[i];
END;
$$;

-- As in 0011 (what the operator API's "why" shows): the owners read, then the rule.
CREATE OR REPLACE FUNCTION fairshare_reserve(processors integer[], virt boolean,
    OUT builders integer, OUT idle integer, OUT reserve integer, OUT level float8,
    OUT held integer[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    owners integer[];
    weights float8[];
    demands float8[];
    runs float8[];
BEGIN
    SELECT array_agg(u.owner ORDER BY u.d / u.w, u.owner), array_agg(u.w ORDER BY u.d / u.w, u.owner),
        array_agg(u.d ORDER BY u.d / u.w, u.owner), array_agg(u.r ORDER BY u.d / u.w, u.owner)
    INTO owners, weights, demands, runs
    FROM (
        SELECT s.owner, coalesce(max(w.weight), max(f.default_weight)) AS w,
            sum(s.waiting + s.running)::float8 AS d, sum(s.running)::float8 AS r
        FROM shareusage_stripe s CROSS JOIN fairshare f LEFT JOIN shareweight w ON w.owner = s.owner
        WHERE s.processor = ANY(processors) AND s.virtualized = virt
        GROUP BY s.owner HAVING sum(s.waiting) > 0 OR sum(s.running) > 0) u;
    SELECT * INTO builders, idle, reserve, level, held
    FROM fairshare_reserve_of(processors, virt, (SELECT f.reserve FROM fairshare f), owners,
        weights, demands, runs);
END;
$$;

-- The job a builder of a kind takes, locked, or NULL: as in 0012 (the longest waiting aged
-- job; else, when one owner alone has work of the kind, its best job; else the best job of
-- the owner with the largest deficit that the reserve does not hold back, passing over
-- owners whose jobs are all locked by other claims), with the stripes read once.
CREATE OR REPLACE FUNCTION buildqueue_candidate(processors integer[], virt boolean,
                                                avoid integer[])
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg fairshare;
    found integer;
    owners integer[];    -- with work of the kind, in the reserve's order
    weights float8[];
    demands float8[];
    runs float8[];
    waits integer[];
    usages float8[];
    held_back integer[];
    turns integer[];
    turn integer;
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
    -- the owners with work of the kind (two are enough to know whether there is a choice)
    SELECT array_agg(w.owner) INTO owners FROM (
        SELECT s.owner FROM shareusage_stripe s
        WHERE s.processor = ANY(processors) AND s.virtualized = virt
        GROUP BY s.owner HAVING sum(s.waiting) > 0 OR sum(s.running) > 0
        LIMIT 2) w;
    IF owners IS NULL THEN
        RETURN NULL;  -- no job of the kind waits
    END IF;
    IF cardinality(owners) = 1 THEN
        turns := owners;
    ELSE
        SELECT * INTO cfg FROM fairshare;
        -- each owner with work of the kind: weight, waiting and running jobs, and its usage
        -- (decayed, each processor's clamped at 0 as the shareusage view does)
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
        SELECT r.held INTO held_back
        FROM fairshare_reserve_of(processors, virt, cfg.reserve, owners, weights, demands, runs) r;
        -- the deficits among the owners with waiting jobs
        SELECT array_agg(d.owner ORDER BY d.deficit DESC, d.owner) INTO turns FROM (
            SELECT o.owner, o.w / sum(o.w) OVER ()
                - coalesce(o.usage / nullif(sum(o.usage) OVER (), 0), 0) AS deficit
            FROM unnest(owners, weights, waits, usages) AS o(owner, w, waiting, usage)
            WHERE o.waiting > 0) d
        WHERE d.owner <> ALL(held_back);
    END IF;
    FOREACH turn IN ARRAY coalesce(turns, '{}') LOOP
        SELECT c.id INTO found FROM unnest(processors) AS p(processor)
        CROSS JOIN LATERAL (
            SELECT q.id, q.lastscore FROM buildqueue q
            WHERE q.status = 0 AND q.builder IS NULL
              AND q.processor = p.processor AND q.virtualized = virt
              AND q.shareowner = turn AND q.id <> ALL(avoid)
            ORDER BY q.lastscore DESC, q.id
            LIMIT 1 FOR UPDATE SKIP LOCKED) c
        ORDER BY c.lastscore DESC, c.id LIMIT 1;
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

-- As in 0011, with the session's stripe row updated in place when it exists.
CREATE OR REPLACE FUNCTION buildqueue_share_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_usage float8 := CASE WHEN OLD.builder IS NOT NULL AND NEW.builder IS NULL
        THEN buildqueue_used(OLD.date_started, OLD.estimated_duration) ELSE 0 END;
    new_usage float8 := CASE WHEN OLD.builder IS NULL AND NEW.builder IS NOT NULL
        THEN extract(epoch FROM NEW.estimated_duration) ELSE 0 END;
    d_waiting integer := buildqueue_is_waiting(NEW.status, NEW.builder)
        - buildqueue_is_waiting(OLD.status, OLD.builder);
    d_running integer := buildqueue_is_running(NEW.builder) - buildqueue_is_running(OLD.builder);
BEGIN
    IF (OLD.processor, OLD.virtualized, OLD.shareowner)
            = (NEW.processor, NEW.virtualized, NEW.shareowner) THEN
        UPDATE shareusage_stripe s
        SET waiting = s.waiting + d_waiting,
            running = s.running + d_running,
            usage = s.usage * power(0.5, greatest(0, extract(epoch FROM now() - s.stamp))
                / (SELECT half_life FROM fairshare)) + old_usage + new_usage,
            stamp = greatest(s.stamp, now())
        WHERE s.processor = NEW.processor AND s.virtualized = NEW.virtualized
          AND s.owner = NEW.shareowner AND s.stripe = shareusage_my_stripe();
        IF NOT FOUND THEN
            PERFORM shareusage_add(NEW.processor, NEW.virtualized, NEW.shareowner, d_waiting,
                d_running, old_usage + new_usage);
        END IF;
    ELSE
        PERFORM shareusage_apply(ARRAY[OLD.processor, NEW.processor],
            ARRAY[OLD.virtualized, NEW.virtualized], ARRAY[OLD.shareowner, NEW.shareowner],
            ARRAY[-buildqueue_is_waiting(OLD.status, OLD.builder),
                buildqueue_is_waiting(NEW.status, NEW.builder)],
            ARRAY[-buildqueue_is_running(OLD.builder), buildqueue_is_running(NEW.builder)],
            ARRAY[old_usage, new_usage]);
    END IF;
    RETURN NULL;
END;
$$;
