-- Fair shares' bookkeeping without a hot row.
--
-- 0008 kept one shareusage row per (processor, virtualized, owner), and every claim, every
-- new job and every job leaving its builder updated it: a farm whose builds mostly belong to
-- one owner (the primary archive) made every such transaction wait for the one before it to
-- commit, since a row lock is held until then. Measured with the master saturated (500
-- builders, builds of 1 s): the upsert of that row took 0.8 ms per call and the batched one
-- 10 ms, almost all of it waiting for the lock.
--
-- Now each owner and kind has up to STRIPES rows (shareusage_stripe); a transaction writes
-- the row of its session's stripe (pg_backend_pid() mod STRIPES), so sessions mostly write
-- rows of their own. Each row keeps its own decay stamp, and decay is linear, so the sum of
-- the rows decayed to now is the owner's usage. A session always writes the same stripe, so
-- the rows a statement locks are still taken in key order (no new deadlock). shareusage is
-- now a view with the old columns: waiting summed, usage decayed to now() (stamp = now()),
-- which is what every reader computed from the old row.

ALTER TABLE shareusage RENAME TO shareusage_stripe;
ALTER TABLE shareusage_stripe ADD COLUMN stripe smallint NOT NULL DEFAULT 0;
ALTER TABLE shareusage_stripe DROP CONSTRAINT shareusage_pkey;
ALTER TABLE shareusage_stripe
    ADD CONSTRAINT shareusage_stripe_pkey PRIMARY KEY (processor, virtualized, owner, stripe);
-- a stripe's waiting count may go below 0 (a job queued by one session, claimed by another)
DROP INDEX shareusage_waiting_idx;

CREATE VIEW shareusage AS
SELECT s.processor, s.virtualized, s.owner, sum(s.waiting)::integer AS waiting,
    greatest(0, sum(s.usage * power(0.5,
        greatest(0, extract(epoch FROM now() - s.stamp)) / f.half_life))) AS usage,
    now() AS stamp
FROM shareusage_stripe s CROSS JOIN fairshare f
GROUP BY s.processor, s.virtualized, s.owner;

-- the stripe this session writes
CREATE FUNCTION shareusage_my_stripe() RETURNS smallint LANGUAGE sql STABLE AS
$$ SELECT (pg_backend_pid() % 8)::smallint $$;

-- As in 0008, into this session's stripe. No clamp at 0 here: a correction (a job that used
-- less than it was charged) may land in another stripe than its charge; the view clamps
-- the sum.
CREATE OR REPLACE FUNCTION shareusage_apply(d_processor integer[], d_virtualized boolean[],
                                            d_owner integer[], d_waiting integer[],
                                            d_usage float8[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shareusage_stripe AS s (processor, virtualized, owner, stripe, waiting, usage,
                                        stamp)
    SELECT d.processor, d.virtualized, d.owner, shareusage_my_stripe(), sum(d.waiting),
        sum(d.usage), now()
    FROM unnest(d_processor, d_virtualized, d_owner, d_waiting, d_usage)
        AS d(processor, virtualized, owner, waiting, usage)
    GROUP BY 1, 2, 3 HAVING sum(d.waiting) <> 0 OR sum(d.usage) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (processor, virtualized, owner, stripe) DO UPDATE
    SET waiting = s.waiting + excluded.waiting,
        usage = s.usage * power(0.5,
            greatest(0, extract(epoch FROM excluded.stamp - s.stamp))
            / (SELECT half_life FROM fairshare)) + excluded.usage,
        stamp = greatest(s.stamp, excluded.stamp);
END;
$$;

CREATE OR REPLACE FUNCTION shareusage_add(d_processor integer, d_virtualized boolean,
                                          d_owner integer, d_waiting integer, d_usage float8)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shareusage_stripe AS s (processor, virtualized, owner, stripe, waiting, usage,
                                        stamp)
    VALUES (d_processor, d_virtualized, d_owner, shareusage_my_stripe(), d_waiting, d_usage,
            now())
    ON CONFLICT (processor, virtualized, owner, stripe) DO UPDATE
    SET waiting = s.waiting + excluded.waiting,
        usage = s.usage * power(0.5,
            greatest(0, extract(epoch FROM excluded.stamp - s.stamp))
            / (SELECT half_life FROM fairshare)) + excluded.usage,
        stamp = greatest(s.stamp, excluded.stamp);
END;
$$;
