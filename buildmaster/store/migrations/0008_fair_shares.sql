-- Fair shares with aging (buildmaster/fairshare.py has the rules; docs/design.md explains).
--
-- Each waiting job belongs to its archive's owner (buildqueue.shareowner, filled on insert).
-- shareusage keeps, per owner and kind of builder (processor, virtualized), how many of its
-- jobs wait and its usage: builder-seconds decayed to ``stamp`` (halving every half_life
-- seconds). Triggers keep both: a claim charges the job's estimated duration, the job leaving
-- its builder corrects the charge to what it used. The claim reads them to serve the owner
-- with the largest deficit, aged jobs first.

-- The settings, one row (seconds): see buildmaster/fairshare.py's FairShareConfig.
CREATE TABLE fairshare (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    half_life       double precision NOT NULL DEFAULT 900 CHECK (half_life > 0),
    aging_bound     double precision NOT NULL DEFAULT 14400 CHECK (aging_bound > 0),
    aging_slack     double precision NOT NULL DEFAULT 1800
        CHECK (aging_slack >= 0 AND aging_slack < aging_bound),
    default_weight  double precision NOT NULL DEFAULT 1 CHECK (default_weight > 0)
);
INSERT INTO fairshare DEFAULT VALUES;

-- Owners whose weight is not the default.
CREATE TABLE shareweight (
    owner   integer PRIMARY KEY REFERENCES person,
    weight  double precision NOT NULL CHECK (weight > 0)
);

CREATE TABLE shareusage (
    processor   integer NOT NULL REFERENCES processor,
    virtualized boolean NOT NULL,
    owner       integer NOT NULL REFERENCES person,
    -- jobs waiting (status 0, no builder)
    waiting     integer NOT NULL DEFAULT 0,
    -- builder-seconds, as they counted at stamp
    usage       double precision NOT NULL DEFAULT 0,
    stamp       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, virtualized, owner)
);
CREATE INDEX shareusage_waiting_idx ON shareusage (processor, virtualized) WHERE waiting > 0;

ALTER TABLE buildqueue ADD COLUMN shareowner integer REFERENCES person;
UPDATE buildqueue q SET shareowner = a.owner FROM build b JOIN archive a ON a.id = b.archive
    WHERE b.id = q.build;
ALTER TABLE buildqueue ALTER COLUMN shareowner SET NOT NULL;

CREATE FUNCTION buildqueue_shareowner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.shareowner IS NULL THEN
        SELECT a.owner INTO NEW.shareowner FROM build b JOIN archive a ON a.id = b.archive
            WHERE b.id = NEW.build;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER buildqueue_shareowner BEFORE INSERT ON buildqueue
    FOR EACH ROW EXECUTE FUNCTION buildqueue_shareowner();

-- Apply per-(processor, virtualized, owner) changes: d(processor, virtualized, owner,
-- waiting, usage), rows locked in key order (two statements never wait on each other in a
-- circle).
CREATE FUNCTION shareusage_apply(d_processor integer[], d_virtualized boolean[],
                                 d_owner integer[], d_waiting integer[], d_usage float8[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shareusage AS s (processor, virtualized, owner, waiting, usage, stamp)
    SELECT d.processor, d.virtualized, d.owner, sum(d.waiting), sum(d.usage), now()
    FROM unnest(d_processor, d_virtualized, d_owner, d_waiting, d_usage)
        AS d(processor, virtualized, owner, waiting, usage)
    GROUP BY 1, 2, 3 HAVING sum(d.waiting) <> 0 OR sum(d.usage) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (processor, virtualized, owner) DO UPDATE
    SET waiting = s.waiting + excluded.waiting,
        usage = greatest(0, s.usage * power(0.5,
            greatest(0, extract(epoch FROM excluded.stamp - s.stamp))
            / (SELECT half_life FROM fairshare)) + excluded.usage),
        stamp = greatest(s.stamp, excluded.stamp);
END;
$$;

-- the same for one (processor, virtualized, owner): what a claim changes
CREATE FUNCTION shareusage_add(d_processor integer, d_virtualized boolean, d_owner integer,
                               d_waiting integer, d_usage float8)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shareusage AS s (processor, virtualized, owner, waiting, usage, stamp)
    VALUES (d_processor, d_virtualized, d_owner, d_waiting, d_usage, now())
    ON CONFLICT (processor, virtualized, owner) DO UPDATE
    SET waiting = s.waiting + excluded.waiting,
        usage = greatest(0, s.usage * power(0.5,
            greatest(0, extract(epoch FROM excluded.stamp - s.stamp))
            / (SELECT half_life FROM fairshare)) + excluded.usage),
        stamp = greatest(s.stamp, excluded.stamp);
END;
$$;

-- 1 for a waiting job (a candidate), else 0
CREATE FUNCTION buildqueue_is_waiting(status smallint, builder integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN status = 0 AND builder IS NULL THEN 1 ELSE 0 END $$;

-- the correction when a job leaves its builder: what it used minus what was charged
CREATE FUNCTION buildqueue_used(date_started timestamptz, estimated interval) RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(greatest(0, extract(epoch FROM now() - date_started)), 0)
        - extract(epoch FROM estimated)
$$;

CREATE FUNCTION buildqueue_share_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shareusage_apply(array_agg(processor), array_agg(virtualized), array_agg(shareowner),
        array_agg(buildqueue_is_waiting(status, builder)),
        array_agg(CASE WHEN builder IS NULL THEN 0 ELSE extract(epoch FROM estimated_duration) END))
    FROM new_rows;
    RETURN NULL;
END;
$$;
CREATE TRIGGER buildqueue_share_insert AFTER INSERT ON buildqueue
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION buildqueue_share_insert();

-- A row trigger (a claim changes one row; cheaper than a statement's transition tables),
-- fired only when a job's place changes (not by its log tail, nor by its dispatch).
CREATE FUNCTION buildqueue_share_update() RETURNS trigger LANGUAGE plpgsql AS $$
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
            old_usage + new_usage);
    ELSE
        PERFORM shareusage_apply(ARRAY[OLD.processor, NEW.processor],
            ARRAY[OLD.virtualized, NEW.virtualized], ARRAY[OLD.shareowner, NEW.shareowner],
            ARRAY[-buildqueue_is_waiting(OLD.status, OLD.builder),
                buildqueue_is_waiting(NEW.status, NEW.builder)],
            ARRAY[old_usage, new_usage]);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER buildqueue_share_update
    AFTER UPDATE OF status, builder, shareowner, processor, virtualized ON buildqueue
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
        OR OLD.builder IS DISTINCT FROM NEW.builder OR OLD.shareowner <> NEW.shareowner
        OR OLD.processor <> NEW.processor OR OLD.virtualized <> NEW.virtualized)
    EXECUTE FUNCTION buildqueue_share_update();

CREATE FUNCTION buildqueue_share_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shareusage_apply(array_agg(processor), array_agg(virtualized), array_agg(shareowner),
        array_agg(-buildqueue_is_waiting(status, builder)),
        array_agg(CASE WHEN builder IS NULL THEN 0
            ELSE buildqueue_used(date_started, estimated_duration) END))
    FROM old_rows;
    RETURN NULL;
END;
$$;
CREATE TRIGGER buildqueue_share_delete AFTER DELETE ON buildqueue
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION buildqueue_share_delete();

-- what is already queued (its running jobs charged their estimate, as a claim would)
SELECT shareusage_apply(array_agg(processor), array_agg(virtualized), array_agg(shareowner),
    array_agg(buildqueue_is_waiting(status, builder)),
    array_agg(CASE WHEN builder IS NULL THEN 0 ELSE extract(epoch FROM estimated_duration) END))
FROM buildqueue;

-- the claim: an owner's best jobs of a kind, and a kind's longest waiting
CREATE INDEX buildqueue_share_idx ON buildqueue (processor, virtualized, shareowner, lastscore DESC, id)
    WHERE status = 0 AND builder IS NULL;
CREATE INDEX buildqueue_age_idx ON buildqueue (processor, virtualized, datecreated, id)
    WHERE status = 0 AND builder IS NULL;

-- The job a builder of a kind (its processors, virtualized or not) takes, locked (other
-- transactions skip it), or NULL: the longest waiting aged job, else the best job (score,
-- then age) of the owner with the largest deficit. Owners whose jobs are all locked by
-- other claims are passed over for the next. The rules: buildmaster/fairshare.py.
CREATE FUNCTION buildqueue_candidate(processors integer[], virt boolean, avoid integer[])
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found integer;
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
    SELECT c.id INTO found FROM (
        SELECT u.owner,
            u.weight / sum(u.weight) OVER ()
                - coalesce(u.usage / nullif(sum(u.usage) OVER (), 0), 0) AS deficit
        FROM (
            SELECT s.owner, max(coalesce(w.weight, f.default_weight)) AS weight,
                sum(s.usage * power(0.5,
                    greatest(0, extract(epoch FROM now() - s.stamp)) / f.half_life)) AS usage
            FROM shareusage s CROSS JOIN fairshare f LEFT JOIN shareweight w ON w.owner = s.owner
            WHERE s.processor = ANY(processors) AND s.virtualized = virt
              AND s.owner IN (SELECT a.owner FROM shareusage a
                  WHERE a.processor = ANY(processors) AND a.virtualized = virt AND a.waiting > 0)
            GROUP BY s.owner) u
        ORDER BY deficit DESC, u.owner) o
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

-- Chroot affinity: the chroots (library file aliases) a trusted builder was last sent, most
-- recent first (it keeps them in its cache; a virtualized builder's VM is reset to a clean
-- image, so nothing is kept for it). Written when a dispatch is recorded.
ALTER TABLE builder ADD COLUMN chroots bigint[] NOT NULL DEFAULT '{}';

-- Claims for several builders of one kind, one after the other (each claim's charge counts
-- for the next): the jobs in the order the rules give; each to the first builder (in asking
-- order) that holds its chroot, else to the first builder left. Stops when nothing is left.
-- Returns the claimed jobs.
CREATE FUNCTION buildqueue_claim_many(builders integer[], processors integer[], virt boolean)
RETURNS SETOF buildqueue LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    left_ integer[] := builders;
    job integer;
    chosen integer;
    claimed buildqueue;
BEGIN
    WHILE cardinality(left_) > 0 LOOP
        job := buildqueue_candidate(processors, virt, '{}');  -- locked
        EXIT WHEN job IS NULL;
        SELECT r.b INTO chosen
        FROM unnest(left_) WITH ORDINALITY AS r(b, n) JOIN builder br ON br.id = r.b
        WHERE br.chroots <> '{}' AND (
            SELECT das.chroot FROM buildqueue q JOIN build bd ON bd.id = q.build
                JOIN distroarchseries das ON das.id = bd.distroarchseries
            WHERE q.id = job) = ANY(br.chroots)
        ORDER BY r.n LIMIT 1;
        chosen := coalesce(chosen, left_[1]);
        left_ := array_remove(left_, chosen);
        UPDATE buildqueue q SET builder = chosen, status = 1 WHERE q.id = job
        RETURNING q.* INTO claimed;
        RETURN NEXT claimed;
    END LOOP;
END;
$$;
