-- The reserve (buildmaster/fairshare.py, rule 6; docs/design.md explains): while at most
-- R builders of a kind are idle, an owner running at least its fair share of the kind may
-- not take one; they are kept for the owners under their share.
--
-- A soft rule, without a lock: a claim counts the kind's idle builders and the owners' jobs
-- on builders as its snapshot shows them, so claims running at the same moment in other
-- sessions may each hand out builders of the reserve: at most one for each builder the other
-- claims in flight take meanwhile, and never more than the reserve; the next claim after
-- they commit sees the truth. Serializing the claims of a kind to make it exact would bring
-- back the wait that 0009 removed.
--
-- Each owner's jobs of a kind on a builder are counted in the usage stripes (0009): the
-- same upsert that charges a claim adds 1 to its session's stripe, the job leaving its
-- builder takes 1 from the stripe of whichever session does that; the view sums them. No
-- row is written that was not written before.

ALTER TABLE fairshare ADD COLUMN reserve double precision NOT NULL DEFAULT 0.03
    CHECK (reserve >= 0 AND reserve < 1);

-- jobs on a builder (running or cancelling); a stripe's count may go below 0, the sum not
ALTER TABLE shareusage_stripe ADD COLUMN running integer NOT NULL DEFAULT 0;

CREATE OR REPLACE VIEW shareusage AS
SELECT s.processor, s.virtualized, s.owner, sum(s.waiting)::integer AS waiting,
    greatest(0, sum(s.usage * power(0.5,
        greatest(0, extract(epoch FROM now() - s.stamp)) / f.half_life))) AS usage,
    now() AS stamp, sum(s.running)::integer AS running
FROM shareusage_stripe s CROSS JOIN fairshare f
GROUP BY s.processor, s.virtualized, s.owner;

-- the builders of a processor (the reserve counts a kind's builders)
CREATE INDEX builderprocessor_processor_idx ON builderprocessor (processor, builder);

DROP FUNCTION shareusage_apply(integer[], boolean[], integer[], integer[], float8[]);
DROP FUNCTION shareusage_add(integer, boolean, integer, integer, float8);

-- As in 0009, with the jobs on a builder: d(processor, virtualized, owner, waiting, running,
-- usage) into this session's stripe, rows locked in key order.
CREATE FUNCTION shareusage_apply(d_processor integer[], d_virtualized boolean[],
                                 d_owner integer[], d_waiting integer[], d_running integer[],
                                 d_usage float8[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shareusage_stripe AS s (processor, virtualized, owner, stripe, waiting, running,
                                        usage, stamp)
    SELECT d.processor, d.virtualized, d.owner, shareusage_my_stripe(), sum(d.waiting),
        sum(d.running), sum(d.usage), now()
    FROM unnest(d_processor, d_virtualized, d_owner, d_waiting, d_running, d_usage)
        AS d(processor, virtualized, owner, waiting, running, usage)
    GROUP BY 1, 2, 3 HAVING sum(d.waiting) <> 0 OR sum(d.running) <> 0 OR sum(d.usage) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (processor, virtualized, owner, stripe) DO UPDATE
    SET waiting = s.waiting + excluded.waiting,
        running = s.running + excluded.running,
        usage = s.usage * power(0.5,
            greatest(0, extract(epoch FROM excluded.stamp - s.stamp))
            / (SELECT half_life FROM fairshare)) + excluded.usage,
        stamp = greatest(s.stamp, excluded.stamp);
END;
$$;

-- the same for one (processor, virtualized, owner): what a claim changes
CREATE FUNCTION shareusage_add(d_processor integer, d_virtualized boolean, d_owner integer,
                               d_waiting integer, d_running integer, d_usage float8)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shareusage_stripe AS s (processor, virtualized, owner, stripe, waiting, running,
                                        usage, stamp)
    VALUES (d_processor, d_virtualized, d_owner, shareusage_my_stripe(), d_waiting, d_running,
            d_usage, now())
    ON CONFLICT (processor, virtualized, owner, stripe) DO UPDATE
    SET waiting = s.waiting + excluded.waiting,
        running = s.running + excluded.running,
        usage = s.usage * power(0.5,
            greatest(0, extract(epoch FROM excluded.stamp - s.stamp))
            / (SELECT half_life FROM fairshare)) + excluded.usage,
        stamp = greatest(s.stamp, excluded.stamp);
END;
$$;

-- 1 for a job on a builder, else 0
CREATE FUNCTION buildqueue_is_running(builder integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN builder IS NULL THEN 0 ELSE 1 END $$;

CREATE OR REPLACE FUNCTION buildqueue_share_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shareusage_apply(array_agg(processor), array_agg(virtualized), array_agg(shareowner),
        array_agg(buildqueue_is_waiting(status, builder)), array_agg(buildqueue_is_running(builder)),
        array_agg(CASE WHEN builder IS NULL THEN 0 ELSE extract(epoch FROM estimated_duration) END))
    FROM new_rows;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION buildqueue_share_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_usage float8 := CASE WHEN OLD.builder IS NOT NULL AND NEW.builder IS NULL
        THEN buildqueue_used(OLD.date_started, OLD.estimated_duration) ELSE 0 END;
    new_usage float8 := CASE WHEN OLD.builder IS NULL AND NEW.builder IS NOT NULL
        THEN extract(epoch FROM NEW.estimated_duration) ELSE 0 END;
BEGIN
    IF (OLD.processor, OLD.virtualized, OLD.shareowner)
            = (NEW.processor, NEW.virtualized, NEW.shareowner) THEN
        PERFORM shareusage_add(NEW.processor, NEW.virtualized, NEW.shareowner,
            buildqueue_is_waiting(NEW.status, NEW.builder)
                - buildqueue_is_waiting(OLD.status, OLD.builder),
            buildqueue_is_running(NEW.builder) - buildqueue_is_running(OLD.builder),
            old_usage + new_usage);
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

CREATE OR REPLACE FUNCTION buildqueue_share_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shareusage_apply(array_agg(processor), array_agg(virtualized), array_agg(shareowner),
        array_agg(-buildqueue_is_waiting(status, builder)),
        array_agg(-buildqueue_is_running(builder)),
        array_agg(CASE WHEN builder IS NULL THEN 0
            ELSE buildqueue_used(date_started, estimated_duration) END))
    FROM old_rows;
    RETURN NULL;
END;
$$;

-- what is on a builder now (the new column is 0 in every stripe)
INSERT INTO shareusage_stripe AS s (processor, virtualized, owner, stripe, running)
SELECT processor, virtualized, shareowner, 0, count(*) FROM buildqueue
WHERE builder IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (processor, virtualized, owner, stripe) DO UPDATE SET running = excluded.running;

-- The reserve of a kind of builder (its processors, virtualized or not), as this claim's
-- snapshot shows it: its builders (ok, active, not in manual mode, with one of the
-- processors), how many of them are idle, the reserve's size, and the owners held back (at
-- least their fair share on builders while at most the reserve is idle), with the level of
-- the fair shares. builders and idle are NULL when the reserve is off or fewer than two
-- owners have work of the kind (nobody to keep builders for: the builders are not
-- counted); level is NULL unless the reserve is reached. No lock: see the top.
--
-- Idle is the builders less the kind's jobs on a builder (summed from the stripes): asking
-- each builder whether it has a job costs an index probe per builder (about 1 ms more at
-- 500 builders). It errs only on mixed farms: a builder of several processors that runs a
-- job of a processor outside the kind is counted idle, and a job on a builder that left
-- the kind's count (manual mode, disabled) is counted against the idle ones.
CREATE FUNCTION fairshare_reserve(processors integer[], virt boolean,
    OUT builders integer, OUT idle integer, OUT reserve integer, OUT level float8,
    OUT held integer[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    fraction float8 := (SELECT f.reserve FROM fairshare f);
    a record;
    owners integer[] := '{}';
    weights float8[] := '{}';
    demands float8[] := '{}';
    runs float8[] := '{}';
    on_builders float8 := 0;
    capacity float8;
    total_w float8;
    before_d float8 := 0;
    before_w float8 := 0;
    l float8;
BEGIN
    held := '{}';
    reserve := 0;
    IF fraction = 0 THEN
        RETURN;
    END IF;
    -- each owner with work of the kind demands its waiting and running jobs; in the order
    -- fairshare.share_level takes them: demand per weight, then id
    FOR a IN
        SELECT s.owner, coalesce(max(w.weight), max(f.default_weight)) AS w,
            sum(s.waiting + s.running)::float8 AS d, sum(s.running)::float8 AS r
        FROM shareusage_stripe s CROSS JOIN fairshare f LEFT JOIN shareweight w ON w.owner = s.owner
        WHERE s.processor = ANY(processors) AND s.virtualized = virt
        GROUP BY s.owner HAVING sum(s.waiting) > 0 OR sum(s.running) > 0
        ORDER BY sum(s.waiting + s.running)::float8
            / coalesce(max(w.weight), max(f.default_weight)), s.owner
    LOOP
        owners := owners || a.owner;
        weights := weights || a.w;
        demands := demands || a.d;
        runs := runs || a.r;
        on_builders := on_builders + a.r;
    END LOOP;
    IF cardinality(owners) < 2 THEN
        RETURN;
    END IF;
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
    -- the max-min level of the shares of the builders beyond the reserve, as
    -- fairshare.share_level computes it: the first owner whose demand per weight reaches
    -- what is left for it and those after it, per weight, sets it
    capacity := builders - reserve;
    total_w := 0;
    FOR i IN 1 .. cardinality(weights) LOOP
        total_w := total_w + weights[i];
    END LOOP;
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

-- The job a builder of a kind (its processors, virtualized or not) takes, locked (other
-- transactions skip it), or NULL: the longest waiting aged job, else the best job (score,
-- then age) of the owner with the largest deficit, passing over the owners the reserve holds
-- back. Owners whose jobs are all locked by other claims are passed over for the next. The
-- rules: buildmaster/fairshare.py.
CREATE OR REPLACE FUNCTION buildqueue_candidate(processors integer[], virt boolean,
                                                avoid integer[])
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found integer;
    held_back integer[];
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
