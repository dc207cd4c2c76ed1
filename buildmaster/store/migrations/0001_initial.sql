-- buildmaster schema, version 1.
-- Names follow Launchpad where it has one. Enumerated columns hold the integer values of the
-- enums in buildmaster/enums.py; CHECK constraints keep them within those values.

CREATE TABLE processor (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_+.-]*$'),
    title       text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT ''
);

CREATE TABLE person (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9+.-]*$'),
    displayname text NOT NULL
);

CREATE TABLE component (
    id   serial PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9+.-]*$')
);
INSERT INTO component (name) VALUES ('main'), ('restricted'), ('universe'), ('multiverse'), ('partner');

CREATE TABLE distribution (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9+.-]*$'),
    displayname text NOT NULL,
    owner       integer NOT NULL REFERENCES person
);

CREATE TABLE distroseries (
    id           serial PRIMARY KEY,
    distribution integer NOT NULL REFERENCES distribution,
    name         text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9+.-]*$'),
    version      text NOT NULL,
    UNIQUE (distribution, name)
);

-- The librarian: bytes on disk addressed by SHA-256, metadata here.
CREATE TABLE libraryfilecontent (
    id          bigserial PRIMARY KEY,
    datecreated timestamptz NOT NULL DEFAULT now(),
    filesize    bigint NOT NULL CHECK (filesize >= 0),
    sha1        text NOT NULL CHECK (sha1 ~ '^[0-9a-f]{40}$'),
    sha256      text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    md5         text NOT NULL CHECK (md5 ~ '^[0-9a-f]{32}$')
);
CREATE INDEX libraryfilecontent_sha1_idx ON libraryfilecontent (sha1);

CREATE TABLE libraryfilealias (
    id          bigserial PRIMARY KEY,
    content     bigint NOT NULL REFERENCES libraryfilecontent,
    filename    text NOT NULL CHECK (
                    length(filename) BETWEEN 1 AND 255
                    AND filename NOT IN ('.', '..')
                    AND position('/' IN filename) = 0
                    AND filename !~ '[[:cntrl:]]'),
    mimetype    text NOT NULL DEFAULT 'application/octet-stream',
    restricted  boolean NOT NULL DEFAULT false,
    expires     timestamptz,
    datecreated timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX libraryfilealias_content_idx ON libraryfilealias (content);
CREATE INDEX libraryfilealias_expires_idx ON libraryfilealias (expires) WHERE expires IS NOT NULL;

CREATE TABLE distroarchseries (
    id              serial PRIMARY KEY,
    distroseries    integer NOT NULL REFERENCES distroseries,
    architecturetag text NOT NULL CHECK (architecturetag ~ '^[a-z0-9][a-z0-9_+.-]*$'),
    processor       integer NOT NULL REFERENCES processor,
    official        boolean NOT NULL DEFAULT true,
    enabled         boolean NOT NULL DEFAULT true,
    -- the chroot tarball builders unpack for this series and architecture
    chroot          bigint REFERENCES libraryfilealias,
    UNIQUE (distroseries, architecturetag),
    UNIQUE (distroseries, processor)
);

-- ArchivePurpose: PRIMARY 1, PPA 2, PARTNER 4, COPY 6.
CREATE TABLE archive (
    id                   serial PRIMARY KEY,
    owner                integer NOT NULL REFERENCES person,
    distribution         integer NOT NULL REFERENCES distribution,
    name                 text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9+.-]*$'),
    displayname          text NOT NULL DEFAULT '',
    purpose              smallint NOT NULL CHECK (purpose IN (1, 2, 4, 6)),
    private              boolean NOT NULL DEFAULT false,
    require_virtualized  boolean NOT NULL DEFAULT false,
    relative_build_score integer NOT NULL DEFAULT 0,
    enabled              boolean NOT NULL DEFAULT true,
    -- a PPA must build on virtualized builders: its code is untrusted
    CHECK (purpose <> 2 OR require_virtualized),
    UNIQUE (distribution, owner, name)
);
-- one primary and one partner archive per distribution
CREATE UNIQUE INDEX archive_distribution_purpose_key ON archive (distribution, purpose)
    WHERE purpose IN (1, 4);

-- SourcePackageUrgency: LOW 1, MEDIUM 2, HIGH 3, EMERGENCY 4.
CREATE TABLE sourcepackagerelease (
    id                  serial PRIMARY KEY,
    name                text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9+.-]+$'),
    version             text NOT NULL CHECK (version ~ '^[0-9A-Za-z.+~:-]+$'),
    component           integer NOT NULL REFERENCES component,
    section             text NOT NULL DEFAULT 'misc',
    urgency             smallint NOT NULL DEFAULT 1 CHECK (urgency BETWEEN 1 AND 4),
    upload_distroseries integer NOT NULL REFERENCES distroseries,
    creator             integer REFERENCES person,
    dateuploaded        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sourcepackagerelease_name_idx ON sourcepackagerelease (name, version);

-- SourcePackageFileType: DSC 1, DIFF 2, ORIG_TARBALL 3, NATIVE_TARBALL 4, DEBIAN_TARBALL 5,
-- COMPONENT_ORIG_TARBALL 6, ORIG_TARBALL_SIGNATURE 7.
CREATE TABLE sourcepackagereleasefile (
    id                   serial PRIMARY KEY,
    sourcepackagerelease integer NOT NULL REFERENCES sourcepackagerelease ON DELETE CASCADE,
    libraryfile          bigint NOT NULL REFERENCES libraryfilealias,
    filetype             smallint NOT NULL CHECK (filetype BETWEEN 1 AND 7),
    UNIQUE (sourcepackagerelease, libraryfile)
);

-- BuilderCleanStatus: CLEAN 0, DIRTY 1, CLEANING 2.
CREATE TABLE builder (
    id                 serial PRIMARY KEY,
    name               text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9+.-]*$'),
    title              text NOT NULL DEFAULT '',
    url                text NOT NULL CHECK (url ~ '^https?://[^/]+/?'),
    virtualized        boolean NOT NULL DEFAULT false,
    vm_host            text,
    builderok          boolean NOT NULL DEFAULT true,
    failnotes          text,
    -- true when the master (not an operator) took the builder out of service: such a
    -- builder is re-probed and comes back by itself once it answers correctly again
    failed_by_master   boolean NOT NULL DEFAULT false,
    manual             boolean NOT NULL DEFAULT false,
    active             boolean NOT NULL DEFAULT true,
    failure_count      integer NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    clean_status       smallint NOT NULL DEFAULT 0 CHECK (clean_status IN (0, 1, 2)),
    date_clean_status_changed timestamptz NOT NULL DEFAULT now(),
    version            text,
    datecreated        timestamptz NOT NULL DEFAULT now(),
    CHECK (builderok OR NOT failed_by_master OR failnotes IS NOT NULL)
);

CREATE TABLE builderprocessor (
    builder   integer NOT NULL REFERENCES builder ON DELETE CASCADE,
    processor integer NOT NULL REFERENCES processor,
    PRIMARY KEY (builder, processor)
);

-- BuildStatus: NEEDSBUILD 0, FULLYBUILT 1, FAILEDTOBUILD 2, MANUALDEPWAIT 3, CHROOTWAIT 4,
-- SUPERSEDED 5, BUILDING 6, FAILEDTOUPLOAD 7, UPLOADING 8, CANCELLING 9, CANCELLED 10,
-- GATHERING 11. PackagePublishingPocket: RELEASE 0, SECURITY 10, UPDATES 20, PROPOSED 30,
-- BACKPORTS 40.
CREATE TABLE build (
    id                    serial PRIMARY KEY,
    sourcepackagerelease  integer NOT NULL REFERENCES sourcepackagerelease,
    distroarchseries      integer NOT NULL REFERENCES distroarchseries,
    archive               integer NOT NULL REFERENCES archive,
    pocket                smallint NOT NULL CHECK (pocket IN (0, 10, 20, 30, 40)),
    -- copied from the distroarchseries and the archive, so the queue needs no joins
    processor             integer NOT NULL REFERENCES processor,
    virtualized           boolean NOT NULL,
    buildstate            smallint NOT NULL DEFAULT 0 CHECK (buildstate BETWEEN 0 AND 11),
    datecreated           timestamptz NOT NULL DEFAULT now(),
    date_started          timestamptz,
    date_first_dispatched timestamptz,
    date_finished         timestamptz,
    builder               integer REFERENCES builder,
    log                   bigint REFERENCES libraryfilealias,
    dependencies          text,
    failure_count         integer NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    -- why the build ended the way it did, for the operator (bad results, refused files, ...)
    failure_reason        text,
    CHECK (date_finished IS NULL OR date_started IS NULL OR date_finished >= date_started)
);
CREATE INDEX build_sourcepackagerelease_idx ON build (sourcepackagerelease);
CREATE INDEX build_builder_idx ON build (builder) WHERE builder IS NOT NULL;
CREATE INDEX build_buildstate_idx ON build (buildstate);
-- at most one live build of a source for an architecture in an archive and pocket
CREATE UNIQUE INDEX build_live_key ON build (sourcepackagerelease, distroarchseries, archive, pocket)
    WHERE buildstate IN (0, 6, 8, 9, 11);

-- The files a build produced (its .changes, .debs, ...), stored in the librarian.
CREATE TABLE buildfile (
    id          serial PRIMARY KEY,
    build       integer NOT NULL REFERENCES build ON DELETE CASCADE,
    libraryfile bigint NOT NULL REFERENCES libraryfilealias,
    filename    text NOT NULL,
    UNIQUE (build, filename)
);

-- BuildQueueStatus: WAITING 0, RUNNING 1, SUSPENDED 2, CANCELLING 3.
CREATE TABLE buildqueue (
    id             serial PRIMARY KEY,
    build          integer NOT NULL UNIQUE REFERENCES build ON DELETE CASCADE,
    builder        integer REFERENCES builder,
    status         smallint NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2, 3)),
    lastscore      integer NOT NULL DEFAULT 0,
    manual         boolean NOT NULL DEFAULT false,
    processor      integer NOT NULL REFERENCES processor,
    virtualized    boolean NOT NULL,
    estimated_duration interval NOT NULL DEFAULT '5 minutes',
    date_started   timestamptz,
    logtail        text,
    datecreated    timestamptz NOT NULL DEFAULT now(),
    -- waiting and suspended jobs have no builder; running and cancelling jobs have one
    CHECK ((status IN (0, 2)) = (builder IS NULL)),
    CHECK (builder IS NOT NULL OR date_started IS NULL)
);
-- at most one job per builder
CREATE UNIQUE INDEX buildqueue_builder_key ON buildqueue (builder) WHERE builder IS NOT NULL;
-- the candidate query: an index scan in (processor, virtualized) order of score, then age
CREATE INDEX buildqueue_candidate_idx ON buildqueue (processor, virtualized, lastscore DESC, id)
    WHERE status = 0 AND builder IS NULL;

-- What happened to builds and builders, and why: for operators.
CREATE TABLE event (
    id       bigserial PRIMARY KEY,
    date     timestamptz NOT NULL DEFAULT now(),
    build    integer REFERENCES build ON DELETE CASCADE,
    builder  integer REFERENCES builder ON DELETE CASCADE,
    kind     text NOT NULL CHECK (kind ~ '^[a-z][a-z-]*$'),
    message  text NOT NULL,
    CHECK (build IS NOT NULL OR builder IS NOT NULL)
);
CREATE INDEX event_build_idx ON event (build, id) WHERE build IS NOT NULL;
CREATE INDEX event_builder_idx ON event (builder, id) WHERE builder IS NOT NULL;

-- A job that becomes available wakes the masters at once (LISTEN buildqueue_waiting). The
-- payload is "<processor> <virtualized> <how many>": a statement queueing many jobs sends one
-- notification per kind with the count, so a master can wake that many idle builders at once.
CREATE FUNCTION buildqueue_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind record;
BEGIN
    FOR kind IN
        SELECT processor, virtualized, count(*) AS jobs FROM queued
        WHERE status = 0 AND builder IS NULL GROUP BY processor, virtualized
    LOOP
        PERFORM pg_notify('buildqueue_waiting', kind.processor || ' ' || kind.virtualized || ' ' || kind.jobs);
    END LOOP;
    RETURN NULL;
END;
$$;
CREATE TRIGGER buildqueue_notify_queued AFTER INSERT ON buildqueue
    REFERENCING NEW TABLE AS queued FOR EACH STATEMENT EXECUTE FUNCTION buildqueue_notify_queued();

CREATE FUNCTION buildqueue_notify_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 0 AND NEW.builder IS NULL AND (OLD.status <> 0 OR OLD.builder IS NOT NULL) THEN
        PERFORM pg_notify('buildqueue_waiting', NEW.processor || ' ' || NEW.virtualized || ' 1');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER buildqueue_notify_waiting AFTER UPDATE OF status, builder ON buildqueue
    FOR EACH ROW EXECUTE FUNCTION buildqueue_notify_waiting();
