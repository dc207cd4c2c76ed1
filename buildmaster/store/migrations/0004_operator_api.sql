-- The operator API: bearer tokens, upload sessions, the indexes its listings need, and the
-- estimated duration of a queued build.

-- A bearer token is stored as the SHA-256 of its secret (the secret itself is shown once,
-- when the token is made). An admin token may do anything; any other token is an uploader
-- to the archives of api_token_archive. A revoked token is kept (for the record), refused.
CREATE TABLE api_token (
    id           serial PRIMARY KEY,
    token_hash   text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    -- the first characters of the secret, to tell tokens apart in listings
    prefix       text NOT NULL CHECK (length(prefix) BETWEEN 4 AND 16),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    admin        boolean NOT NULL DEFAULT false,
    created_by   integer REFERENCES api_token,
    datecreated  timestamptz NOT NULL DEFAULT now(),
    date_revoked timestamptz
);

CREATE TABLE api_token_archive (
    token   integer NOT NULL REFERENCES api_token ON DELETE CASCADE,
    archive integer NOT NULL REFERENCES archive ON DELETE CASCADE,
    PRIMARY KEY (token, archive)
);

-- An upload session: the files of one source package, streamed one by one into the
-- librarian (provisional: they expire with the session), then submitted together.
CREATE TABLE upload (
    id                   serial PRIMARY KEY,
    archive              integer NOT NULL REFERENCES archive,
    token                integer NOT NULL REFERENCES api_token,
    datecreated          timestamptz NOT NULL DEFAULT now(),
    expires              timestamptz NOT NULL,
    -- set when submitted: the source package release it made
    sourcepackagerelease integer REFERENCES sourcepackagerelease,
    date_submitted       timestamptz,
    CHECK ((sourcepackagerelease IS NULL) = (date_submitted IS NULL))
);
CREATE INDEX upload_expires_idx ON upload (expires) WHERE date_submitted IS NULL;

-- The files of a session. No foreign key to libraryfilealias on purpose: the librarian's
-- garbage collector keeps every alias a foreign key points at, and an abandoned session's
-- files must expire. A submit checks that each alias is still there and unexpired.
CREATE TABLE upload_file (
    upload      integer NOT NULL REFERENCES upload ON DELETE CASCADE,
    filename    text NOT NULL,
    libraryfile bigint NOT NULL,
    PRIMARY KEY (upload, filename)
);

-- Listing builds newest first (keyset pagination on id), filtered by state, archive or
-- builder: one index each, in id order.
DROP INDEX build_buildstate_idx;
CREATE INDEX build_buildstate_idx ON build (buildstate, id);
CREATE INDEX build_archive_idx ON build (archive, id);
DROP INDEX build_builder_idx;
CREATE INDEX build_builder_idx ON build (builder, id) WHERE builder IS NOT NULL;
-- builds finished in a span of time (listings, and the metrics' count of finished builds)
CREATE INDEX build_date_finished_idx ON build (date_finished) WHERE date_finished IS NOT NULL;
-- the last successful build of a source on a processor (a queued build's estimated duration)
CREATE INDEX build_fullybuilt_idx ON build (sourcepackagerelease, processor, date_finished)
    WHERE buildstate = 1;

-- since when a builder is out of service: its latest "failed" or "disabled" event (a few
-- among the many events of a busy builder)
CREATE INDEX event_builder_out_of_service_idx ON event (builder, id)
    WHERE kind IN ('failed', 'disabled');

-- A queued build's estimated duration: how long the last successful build of the same
-- source (any version) on the same processor took; else the column's default.
CREATE FUNCTION buildqueue_estimate_duration() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_duration interval;
BEGIN
    SELECT b.date_finished - b.date_started INTO last_duration
    FROM build nb
    JOIN sourcepackagerelease ns ON ns.id = nb.sourcepackagerelease
    JOIN sourcepackagerelease s ON s.name = ns.name
    JOIN build b ON b.sourcepackagerelease = s.id AND b.processor = NEW.processor
        AND b.buildstate = 1
    WHERE nb.id = NEW.build AND b.date_started IS NOT NULL AND b.date_finished IS NOT NULL
    ORDER BY b.date_finished DESC
    LIMIT 1;
    IF last_duration IS NOT NULL THEN
        NEW.estimated_duration := greatest(last_duration, interval '1 second');
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER buildqueue_estimate_duration BEFORE INSERT ON buildqueue
    FOR EACH ROW EXECUTE FUNCTION buildqueue_estimate_duration();
