"""A job's life on the farm: claim, dispatch, requeue, finish, and the builder's side of it.

Long: every transaction of a job's life is here, next to the others it must agree with (the
guards of claim, dispatch, requeue, finish); split, statements that must stay consistent would
be read apart.

Every change here is one transaction (often one statement) guarded by what the caller
believes: a job is only marked dispatched if it is still claimed by that builder, only
finished if it still runs there, and so on. A master acting on stale knowledge (or a
second master) gets :class:`JobGone` instead of corrupting anything.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import task

from buildmaster.buildargs import BuildContext
from buildmaster.enums import (
    ArchivePurpose,
    BuilderCleanStatus,
    BuildQueueStatus,
    BuildStatus,
    SourcePackageFileType,
)
from buildmaster.model import (
    Builder,
    BuilderSnapshot,
    BuildQueue,
    DistroArchSeries,
    HasId,
    LibraryFile,
    SourcePackageReleaseFile,
    id_of,
)
from buildmaster.store.archives import (
    ARCHIVE_FROM,
    archive_columns,
    archive_from_row,
    archive_suspension,
    disabled_reason_sql,
)
from buildmaster.store.batching import StatementBatcher
from buildmaster.store.builders import BUILDER_WIDTH, builder_columns, builder_from_row
from buildmaster.store.builds import (
    _CANDIDATE_ID,
    BUILD_WIDTH,
    QUEUE_COLUMNS,
    QUEUE_WIDTH,
    build_columns,
    build_from_row,
    enqueue,
    get_build,
    get_queue_entry,
    queue_columns,
    queue_from_row,
    set_build_status,
)
from buildmaster.store.database import ConstraintViolation, Database, NotFound, Transaction
from buildmaster.store.distributions import _DAS_COLUMNS, _DAS_FROM
from buildmaster.store.events import record_event
from buildmaster.store.files import LIBRARYFILE_JOIN, library_file_from_row
from buildmaster.store.sources import SPR_COLUMNS, SPR_FROM, spr_from_row
from buildmaster.transitions import RETRYABLE, IllegalTransition, can_transition, check_transition

__all__ = ["JobQueries", "JobGone", "Claimed", "DISCOVERED"]

#: the note of a dispatch the master learnt of from the builder, not from build()'s answer
DISCOVERED = "discovered after a restart"

_SNAPSHOT_SQL = (
    f"SELECT {builder_columns('br')}, {queue_columns('q')}, {build_columns('bd')}"
    " FROM builder br LEFT JOIN buildqueue q ON q.builder = br.id"
    " LEFT JOIN build bd ON bd.id = q.build"
)


_LF_JSON = (
    "json_build_array(lfa.id, lfa.content, lfa.filename, lfa.mimetype, lfa.restricted, lfa.expires,"
    " lfc.filesize, lfc.sha1, lfc.sha256, lfc.md5, lfa.datecreated)"
)
_CONTEXT_COLUMNS = (
    f"{build_columns('b')}, {SPR_COLUMNS}, {_DAS_COLUMNS},"
    f" (SELECT json_agg(json_build_array({archive_columns('a2', 'p2', 'd2')}))"
    "  FROM archive a2 JOIN person p2 ON p2.id = a2.owner JOIN distribution d2 ON d2.id = a2.distribution"
    "  WHERE a2.id = b.archive OR (a2.distribution = d.id AND a2.purpose = 1)),"
    f" (SELECT json_agg(json_build_array(sprf.id, sprf.sourcepackagerelease, sprf.filetype,"
    "   lfa.id, lfa.content, lfa.filename, lfa.mimetype, lfa.restricted, lfa.expires,"
    "   lfc.filesize, lfc.sha1, lfc.sha256, lfc.md5, lfa.datecreated))"
    f"  FROM sourcepackagereleasefile sprf JOIN {LIBRARYFILE_JOIN} ON lfa.id = sprf.libraryfile"
    "  WHERE sprf.sourcepackagerelease = spr.id),"
    f" (SELECT {_LF_JSON} FROM {LIBRARYFILE_JOIN} WHERE lfa.id = das.chroot)"
)
#: joined to ``build b``: its release and architecture
_CONTEXT_JOINS = (
    f" JOIN {SPR_FROM} ON spr.id = b.sourcepackagerelease"
    f" JOIN {_DAS_FROM} ON das.id = b.distroarchseries"
)
_CONTEXT_SQL = f"SELECT {_CONTEXT_COLUMNS} FROM build b {_CONTEXT_JOINS} WHERE b.id = %s"

_CLAIM_NEXT_SQL = (
    f"WITH claimed AS (UPDATE buildqueue q SET builder = %(builder)s, status = 1"
    f" WHERE q.id = ({_CANDIDATE_ID}) RETURNING {QUEUE_COLUMNS}),"
    " dirty AS (UPDATE builder SET clean_status = 1, date_clean_status_changed = now()"
    "  WHERE id = %(builder)s AND clean_status <> 1 AND EXISTS (SELECT 1 FROM claimed))"
)
#: the claim, returning the job and what its dispatch needs (one round trip)
_CLAIM_FOR_DISPATCH_SQL = (
    f"{_CLAIM_NEXT_SQL} SELECT claimed.*, {_CONTEXT_COLUMNS}"
    f" FROM claimed JOIN build b ON b.id = claimed.build {_CONTEXT_JOINS}"
)

#: Claims for several builders of one kind (the same processors and virtualization) in one
#: statement: one claim after the other in the database (each one's charge to its owner's
#: usage counts for the next: :mod:`buildmaster.fairshare`), each job to the first builder
#: that holds its chroot (chroot affinity: it changes no job's turn), else the best to the
#: builder that asked first. Each candidate is locked with SKIP LOCKED, so no other
#: master's claim can take one. A builder that has a job already is left out (it gets
#: nothing, as its lone claim would); one given a job by another master while the statement
#: runs breaks the unique key, and the claims are then made one by one.
_CLAIM_MANY_SQL = f"""
WITH req AS MATERIALIZED (
    SELECT array_agg(r.builder ORDER BY r.n) AS builders
    FROM unnest(%(builders)s::integer[]) WITH ORDINALITY AS r(builder, n)
    WHERE NOT EXISTS (SELECT 1 FROM buildqueue o WHERE o.builder = r.builder)),
claimed AS MATERIALIZED (
    SELECT c.* FROM req, buildqueue_claim_many(req.builders, %(processors)s::integer[],
        %(virtualized)s) AS c
    WHERE req.builders IS NOT NULL),
dirty AS (
    UPDATE builder SET clean_status = 1, date_clean_status_changed = now()
    WHERE id IN (SELECT builder FROM claimed) AND clean_status <> 1)
SELECT {queue_columns("claimed")}, {_CONTEXT_COLUMNS}
FROM claimed JOIN build b ON b.id = claimed.build {_CONTEXT_JOINS}"""

#: what claims of one kind have in common: the builders' processors and virtualization
_Kind = tuple[tuple[int, ...], bool]


@attrs.frozen
class Claimed:
    """A job just claimed for a builder, with its dispatch context."""

    job: BuildQueue
    context: BuildContext


def _timestamp(value: str | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromisoformat(value)


def _file_from_json(values: Sequence[Any]) -> LibraryFile:
    row = list(values)
    row[5] = _timestamp(row[5])
    row[10] = _timestamp(row[10])
    return library_file_from_row(tuple(row))


_STATE_NAMES = ", ".join(f"({int(s)}, '{s.name}')" for s in BuildStatus)

_TRANSITIONS = ", ".join(
    f"({int(a)}, {int(b)})" for a in BuildStatus for b in BuildStatus if can_transition(a, b)
)

# the end of one or more builds: rows locked in key order; per job, what it found
_FINISH_SQL = f"""
WITH i AS MATERIALIZED (
    SELECT * FROM unnest(%(jobs)s::integer[], %(builders)s::integer[], %(states)s::integer[],
        %(nows)s::timestamptz[], %(logs)s::bigint[], %(dependencies)s::text[],
        %(reasons)s::text[], %(messages)s::text[])
    AS i(job, builder, state, now, log, dependencies, reason, message)),
job AS MATERIALIZED (
    SELECT q.id, q.build FROM buildqueue q JOIN i ON q.id = i.job AND q.builder = i.builder
    ORDER BY q.id FOR UPDATE OF q),
old AS MATERIALIZED (
    SELECT b.id, b.buildstate, job.id AS job FROM build b JOIN job ON b.id = job.build
    ORDER BY b.id FOR UPDATE OF b),
done AS (
    UPDATE build SET buildstate = i.state, date_finished = i.now,
        log = coalesce(i.log, build.log), dependencies = i.dependencies,
        failure_reason = i.reason, builder = i.builder,
        date_started = coalesce(build.date_started, i.now)
    FROM old JOIN i ON i.job = old.job
    WHERE build.id = old.id AND (old.buildstate, i.state) IN (VALUES {_TRANSITIONS})
    RETURNING build.id, i.job, i.builder, i.message, old.buildstate AS old_state),
gone AS (
    DELETE FROM buildqueue q USING done WHERE q.id = done.job),
works AS (
    UPDATE builder SET failure_count = 0 FROM done
    WHERE builder.id = done.builder AND builder.failure_count <> 0),
files AS (
    INSERT INTO buildfile (build, libraryfile, filename)
    SELECT done.id, f.alias, f.name
    FROM done JOIN unnest(%(file_jobs)s::integer[], %(file_aliases)s::bigint[],
        %(file_names)s::text[]) AS f(job, alias, name) ON f.job = done.job
    ON CONFLICT (build, filename) DO NOTHING),
kept AS (
    UPDATE libraryfilealias a SET expires = NULL
    FROM done JOIN unnest(%(keep_jobs)s::integer[], %(keep_aliases)s::bigint[]) AS k(job, alias)
        ON k.job = done.job
    WHERE a.id = k.alias AND a.expires IS NOT NULL),
event AS (
    INSERT INTO event (build, builder, kind, message)
    SELECT done.id, done.builder, 'finished', n.name || done.message
    FROM done JOIN (VALUES {_STATE_NAMES}) AS n(value, name) ON n.value = done.old_state)
SELECT i.job, job.id, old.buildstate, done.id
FROM i LEFT JOIN job ON job.id = i.job LEFT JOIN old ON old.job = i.job
    LEFT JOIN done ON done.job = i.job
"""


@attrs.frozen
class _Finished:
    job: BuildQueue
    builder: Builder
    state: BuildStatus
    now: datetime.datetime
    log: int | None
    files: tuple[tuple[str, int], ...]
    dependencies: str | None
    reason: str | None

    @property
    def keep(self) -> list[int]:
        """The aliases made permanent: the files and the log."""
        return [alias for _, alias in self.files] + ([self.log] if self.log is not None else [])

    @property
    def message(self) -> str:
        return f" -> {self.state.name} on {self.builder.name}" + (
            f": {self.reason}" if self.reason else ""
        )

    def outcome(
        self, job_id: int | None, old_state: int | None, done: int | None
    ) -> bool | IllegalTransition:
        """What :meth:`JobQueries.finish` answers (``False``: the job is gone), or the
        error it raises, from what the statement found for this job."""
        if job_id is None:
            return False
        if done is None:
            assert old_state is not None
            return IllegalTransition(self.job.build_id, BuildStatus(old_state), self.state)
        return True


def _context_from_row(row: tuple[Any, ...]) -> BuildContext:
    """A :class:`BuildContext` from the columns of ``_CONTEXT_COLUMNS``."""
    build = build_from_row(row[:BUILD_WIDTH])
    spr = spr_from_row(row[BUILD_WIDTH : BUILD_WIDTH + 8])
    das = DistroArchSeries(*row[BUILD_WIDTH + 8 : BUILD_WIDTH + 18])
    archive_rows, file_rows, chroot_row = row[BUILD_WIDTH + 18 :]
    archives = [archive_from_row(r) for r in archive_rows or ()]
    archive = next(a for a in archives if a.id == build.archive_id)
    primary = next((a for a in archives if a.purpose is ArchivePurpose.PRIMARY), None)
    files = tuple(
        SourcePackageReleaseFile(r[0], r[1], SourcePackageFileType(r[2]), _file_from_json(r[3:]))
        for r in sorted(file_rows or (), key=lambda r: (r[2], r[5]))
    )
    chroot = _file_from_json(chroot_row) if chroot_row else None
    return BuildContext(build, spr, das, archive, primary, chroot, files)


class JobGone(Exception):
    """The job is no longer where the caller thought (cancelled, taken over, finished)."""


def _snapshot(row: tuple[Any, ...]) -> BuilderSnapshot:
    builder = builder_from_row(row[:BUILDER_WIDTH])
    rest = row[BUILDER_WIDTH:]
    job = queue_from_row(rest[:10]) if rest[0] is not None else None
    build = build_from_row(rest[10 : 10 + BUILD_WIDTH]) if job is not None else None
    return BuilderSnapshot(builder, job, build)


def _clean_text(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text.replace("\x00", "")


@attrs.frozen
class _Dispatched:
    job: int
    builder: int
    builder_name: str
    now: datetime.datetime
    #: how the dispatch became known, when not from build()'s answer
    note: str = ""

    @property
    def message(self) -> str:
        return f"dispatched to {self.builder_name}" + (f" ({self.note})" if self.note else "")


# the dispatch of one or more jobs (rows locked in job order); the jobs still claimed
_RECORD_DISPATCH_SQL = (
    "WITH i AS MATERIALIZED (SELECT * FROM unnest(%(jobs)s::integer[], %(builders)s::integer[],"
    "  %(nows)s::timestamptz[], %(messages)s::text[]) AS i(job, builder, now, message)),"
    " locked AS MATERIALIZED (SELECT q.id FROM buildqueue q JOIN i ON q.id = i.job"
    "  AND q.builder = i.builder AND q.status = 1 ORDER BY q.id FOR UPDATE OF q),"
    " q AS (UPDATE buildqueue SET date_started = i.now FROM i"
    "  WHERE buildqueue.id = i.job AND buildqueue.id IN (SELECT id FROM locked)"
    "  RETURNING buildqueue.id AS job, buildqueue.build, i.builder, i.now, i.message),"
    " b AS (UPDATE build SET buildstate = 6, builder = q.builder, date_started = q.now,"
    "  date_first_dispatched = coalesce(build.date_first_dispatched, q.now), date_finished = NULL"
    "  FROM q WHERE build.id = q.build AND build.buildstate = 0"
    "  RETURNING build.id, q.job, q.builder, q.message, build.distroarchseries),"
    # the chroot the builder now holds (trusted builders keep their two latest: affinity)
    " held AS (UPDATE builder br SET chroots = (ARRAY[das.chroot] || array_remove(br.chroots,"
    "  das.chroot))[1:2] FROM b JOIN distroarchseries das ON das.id = b.distroarchseries"
    "  WHERE br.id = b.builder AND NOT br.virtualized AND das.chroot IS NOT NULL"
    "  AND br.chroots[1] IS DISTINCT FROM das.chroot),"
    " e AS (INSERT INTO event (build, builder, kind, message)"
    "  SELECT id, builder, 'dispatched', message FROM b)"
    " SELECT job FROM b"
)


#: a job whose archive is disabled is suspended, for its archive, where it would wait
_WAITS_OR_SUSPENDED = (
    "status = CASE WHEN a.enabled THEN 0 ELSE 2 END,"
    f" suspended_reason = CASE WHEN a.enabled THEN NULL ELSE {disabled_reason_sql()} END"
)

# a claim that never reached the builder undone: the job waits (or is suspended) again
_RELEASE_CLAIM_SQL = (
    f"WITH q AS (UPDATE buildqueue SET builder = NULL, {_WAITS_OR_SUSPENDED},"
    "  date_started = NULL, logtail = NULL"
    f"  FROM build b JOIN {ARCHIVE_FROM} ON a.id = b.archive"
    "  WHERE buildqueue.id = %(job)s AND buildqueue.builder = %(builder)s"
    "  AND buildqueue.status = 1 AND b.id = buildqueue.build AND b.buildstate = 0"
    "  RETURNING buildqueue.build, buildqueue.suspended_reason),"
    " e AS (INSERT INTO event (build, builder, kind, message)"
    "  SELECT build, %(builder)s, 'released', %(reason)s FROM q"
    "  UNION ALL SELECT build, %(builder)s, 'suspended', suspended_reason FROM q"
    "  WHERE suspended_reason IS NOT NULL)"
    " SELECT build FROM q"
)

# suspended jobs ({which}) back in the queue, those of a disabled archive suspended for it
# (a job suspended for its archive already is left as it is); how many went back
_RESUME_SQL = (
    f"WITH q AS (UPDATE buildqueue SET {_WAITS_OR_SUSPENDED}, resume_after = NULL"
    f"  FROM build b JOIN {ARCHIVE_FROM} ON a.id = b.archive"
    "  WHERE b.id = buildqueue.build AND buildqueue.status = 2 AND {which}"
    "  AND (a.enabled OR buildqueue.resume_after IS NOT NULL"
    f"   OR buildqueue.suspended_reason IS DISTINCT FROM {disabled_reason_sql()})"
    "  RETURNING buildqueue.build, buildqueue.status, buildqueue.suspended_reason),"
    " e AS (INSERT INTO event (build, kind, message)"
    "  SELECT build, CASE WHEN status = 0 THEN 'resumed' ELSE 'suspended' END,"
    "   coalesce(suspended_reason, %(message)s) FROM q)"
    " SELECT count(*) FILTER (WHERE status = 0) FROM q"
)


#: seconds between two claims handed to their dispatches, at least (500 per second at most)
CLAIM_PACE = 0.002


class JobQueries:
    def __init__(self, db: Database) -> None:
        self._db = db
        #: seconds between two claims handed out, at least (0: no pace)
        self.claim_pace = CLAIM_PACE
        self._next_claim_out = 0.0
        #: dispatches recorded together when they come together
        self.dispatches: StatementBatcher[_Dispatched, None] = StatementBatcher(
            self._record_dispatches
        )
        #: and the ends of builds
        self.finishes: StatementBatcher[_Finished, bool] = StatementBatcher(self._finish_many)
        #: claims of builders of one kind, made together when they come together
        self.claims: dict[_Kind, StatementBatcher[Builder, Claimed | None]] = {}

    # -- reading --------------------------------------------------------------------

    async def snapshots(
        self,
        builder_ids: Sequence[int] | None = None,
        parts: tuple[int, Sequence[int]] | None = None,
    ) -> list[BuilderSnapshot]:
        """Every active builder (or those in ``builder_ids``, or with ``id % n`` in ``ks``
        for ``parts=(n, ks)``) with its job and build."""
        if parts is not None:
            rows = await self._db.query(
                _SNAPSHOT_SQL + " WHERE br.active AND br.id %% %s = ANY(%s) ORDER BY br.name",
                (parts[0], list(parts[1])),
                prepared=True,
            )
        elif builder_ids is None:
            rows = await self._db.query(
                _SNAPSHOT_SQL + " WHERE br.active ORDER BY br.name", prepared=True
            )
        else:
            rows = await self._db.query(
                _SNAPSHOT_SQL + " WHERE br.id = ANY(%s) ORDER BY br.name",
                (list(builder_ids),),
                prepared=True,
            )
        return [_snapshot(r) for r in rows]

    async def snapshot(self, builder: HasId | int) -> BuilderSnapshot:
        rows = await self._db.query(
            _SNAPSHOT_SQL + " WHERE br.id = %s", (id_of(builder),), prepared=True
        )
        if not rows:
            raise NotFound(f"no builder {id_of(builder)}")
        return _snapshot(rows[0])

    async def context(self, build_id: int) -> BuildContext:
        """What a dispatch needs about a build: release, architecture, archives, chroot, files.

        One round trip: the archives and files come back as JSON arrays.
        """
        rows = await self._db.query(_CONTEXT_SQL, (build_id,), prepared=True)
        if not rows:
            raise NotFound(f"no build {build_id}")
        return _context_from_row(rows[0])

    # -- claiming and dispatching ------------------------------------------------------

    async def claim_next(self, builder: Builder, avoid: Sequence[int] = ()) -> BuildQueue | None:
        """Claim the next waiting job for ``builder`` (one statement; never one job for two
        builders, whatever other masters do): aged jobs first, then the best job of the owner
        with the largest fair-share deficit, passing over the owners the reserve holds back
        (:mod:`buildmaster.fairshare`). The builder is dirty from now on.

        :param avoid: ids of jobs not to take (they just failed on this builder).
        :returns: the claimed job, or ``None`` when there is nothing to do, or nothing it
            may take (the reserve), or the builder already has a job.
        """
        rows = await self._claim(_CLAIM_NEXT_SQL + " SELECT * FROM claimed", builder, avoid)
        return queue_from_row(rows[0]) if rows else None

    async def claim_next_for_dispatch(
        self, builder: Builder, avoid: Sequence[int] = ()
    ) -> Claimed | None:
        """:meth:`claim_next`, returning the claimed build's :meth:`context` along with the
        job, from the same statement (what the scanner runs: one round trip less).

        Builders of one kind (processors and virtualization) that claim at about the same
        moment share a statement, and are handed out at most one per ``claim_pace``
        seconds: builders sent to fetch their files all at once slow each other down, and
        the whole farm with them (measured in benchmarks/results/master.md). A claim that
        avoids jobs of its own runs alone, at once."""
        if avoid:
            return await self._claim_alone(builder, avoid)
        kind = (tuple(sorted(builder.processor_ids)), builder.virtualized)
        batcher = self.claims.get(kind)
        if batcher is None:
            batcher = self.claims[kind] = StatementBatcher(self._claim_many)
        claimed = await batcher.submit(builder)
        if claimed is not None and self.claim_pace > 0:
            # one claim per pace at most: those that came back together go out one by one
            clock = self._db.clock
            now = clock.seconds()
            at = max(now, self._next_claim_out)
            self._next_claim_out = at + self.claim_pace
            if at > now:
                await task.deferLater(clock, at - now, lambda: None)
        return claimed

    async def _claim_alone(self, builder: Builder, avoid: Sequence[int]) -> Claimed | None:
        rows = await self._claim(_CLAIM_FOR_DISPATCH_SQL, builder, avoid)
        if not rows:
            return None
        row = rows[0]
        return Claimed(queue_from_row(row[:QUEUE_WIDTH]), _context_from_row(row[QUEUE_WIDTH:]))

    async def _claim_many(self, builders: list[Builder]) -> list[Claimed | None]:
        """Claims for builders of one kind; a lone one is the statement of a lone claim. A
        shared statement that breaks a constraint (a builder got a job meanwhile) raises, so
        that each claim is made again on its own."""
        if len(builders) == 1:
            return [await self._claim_alone(builders[0], ())]
        first = builders[0]
        rows = await self._db.query(
            _CLAIM_MANY_SQL,
            {
                "builders": [b.id for b in builders],
                "processors": list(first.processor_ids),
                "virtualized": first.virtualized,
            },
            prepared=True,
        )
        found: dict[int | None, Claimed] = {}
        for row in rows:
            job = queue_from_row(row[:QUEUE_WIDTH])
            found[job.builder_id] = Claimed(job, _context_from_row(row[QUEUE_WIDTH:]))
        return [found.get(b.id) for b in builders]

    async def _claim(
        self, sql: str, builder: Builder, avoid: Sequence[int]
    ) -> list[tuple[Any, ...]]:
        try:
            return await self._db.query(
                sql,
                {
                    "builder": builder.id,
                    "processors": list(builder.processor_ids),
                    "virtualized": builder.virtualized,
                    "avoid": list(avoid),
                },
                prepared=True,
            )
        except ConstraintViolation as e:
            if e.constraint == "buildqueue_builder_key":
                return []  # the builder got a job meanwhile (another master)
            raise

    async def claim(self, job: HasId | int, builder: Builder) -> BuildQueue:
        """Claim this particular waiting job for ``builder``.

        :raises JobGone: when it is no longer waiting (or the builder already has a job).
        """
        try:
            rows = await self._db.query(
                "WITH claimed AS (UPDATE buildqueue q SET builder = %(builder)s, status = 1"
                f" WHERE q.id = %(job)s AND q.status = 0 AND q.builder IS NULL RETURNING {QUEUE_COLUMNS}),"
                " dirty AS (UPDATE builder SET clean_status = 1, date_clean_status_changed = now()"
                "  WHERE id = %(builder)s AND EXISTS (SELECT 1 FROM claimed))"
                " SELECT * FROM claimed",
                {"builder": builder.id, "job": id_of(job)},
                prepared=True,
            )
        except ConstraintViolation as e:
            if e.constraint == "buildqueue_builder_key":
                raise JobGone(f"builder {builder.name} already has a job") from None
            raise
        if not rows:
            raise JobGone(f"job {id_of(job)} is no longer waiting")
        return queue_from_row(rows[0])

    async def record_dispatch(
        self, job: BuildQueue, builder: Builder, now: datetime.datetime, note: str = ""
    ) -> None:
        """The builder accepted the build: the job shows its builder and buildstart, the build
        is BUILDING, and a "dispatched" event says to which builder (with ``note`` when the
        dispatch was learnt otherwise than from build()'s answer). The builder's failure
        count stays (it is reset when a build ends: :meth:`finish`). Dispatches recorded at
        about the same moment share a statement.

        :raises JobGone: when the job was cancelled or taken away meanwhile.
        """
        await self.dispatches.submit(_Dispatched(job.id, builder.id, builder.name, now, note))

    async def _record_dispatches(self, ds: list[_Dispatched]) -> list[None | JobGone]:
        rows = await self._db.query(
            _RECORD_DISPATCH_SQL,
            {
                "jobs": [d.job for d in ds],
                "builders": [d.builder for d in ds],
                "nows": [d.now for d in ds],
                "messages": [d.message for d in ds],
            },
            prepared=True,
        )
        done = {row[0] for row in rows}
        return [
            None
            if d.job in done
            else JobGone(f"job {d.job} is no longer claimed by {d.builder_name}")
            for d in ds
        ]

    async def release_claim(self, job: BuildQueue, builder: Builder, reason: str) -> bool:
        """Undo a claim that never reached the builder (no blame): the job waits again (or is
        suspended, when its archive was disabled meanwhile)."""
        rows = await self._db.query(
            _RELEASE_CLAIM_SQL,
            {"job": job.id, "builder": builder.id, "reason": reason},
            prepared=True,
        )
        return bool(rows)

    async def suspend(
        self,
        job: BuildQueue,
        builder: Builder | None,
        reason: str,
        resume_after: datetime.datetime | None = None,
    ) -> bool:
        """Take a job out of the candidates, with the reason (``buildqueue.suspended_reason``,
        and a "suspended" event): its architecture has no chroot yet, or the master's side
        failed while dispatching it. A job claimed by ``builder`` is suspended only if it
        still is (not if it was cancelled or taken meanwhile).

        :param resume_after: when it goes back in the queue by itself (:meth:`resume_due`);
            ``None``: when what it waits for arrives (:meth:`resume_suspended`).
        :returns: whether it was suspended.
        """

        async def suspend(tx: Transaction) -> bool:
            count = await tx.execute(
                "UPDATE buildqueue SET builder = NULL, status = 2, date_started = NULL,"
                " logtail = NULL, suspended_reason = %s, resume_after = %s"
                " WHERE id = %s AND (builder = %s OR (builder IS NULL AND status = 0))"
                " AND status IN (0, 1)",
                (reason, resume_after, job.id, builder.id if builder else None),
            )
            if count:
                await record_event(
                    tx,
                    "suspended",
                    reason,
                    build=job.build_id,
                    builder=builder.id if builder else None,
                )
            return bool(count)

        return await self._db.transaction(suspend)

    async def resume_suspended(self, distroarchseries: HasId | int) -> int:
        """Put the suspended jobs of an architecture back in the queue (its chroot arrived);
        those of a disabled archive stay suspended, for their archive. Returns how many went
        back."""
        rows = await self._db.query(
            _RESUME_SQL.format(which="b.distroarchseries = %(which)s"),
            {"which": id_of(distroarchseries), "message": "back in the queue"},
        )
        return int(rows[0][0])

    async def resume_due(self, now: datetime.datetime) -> int:
        """Put back in the queue the suspended jobs whose ``resume_after`` has come (what
        held them up was the master's side: they are tried again); those of a disabled
        archive stay suspended, for their archive, with no time to come back. Returns how
        many went back."""
        rows = await self._db.query(
            _RESUME_SQL.format(which="buildqueue.resume_after <= %(which)s"),
            {"which": now, "message": "back in the queue: trying again"},
        )
        return int(rows[0][0])

    async def forget_idle_owners(self) -> int:
        """Delete the usage rows of the owners that have had no job of a kind waiting or on
        a builder for 20 half-lives (``shareusage_forget()``, migration 0015): the claims
        read every row of their kind. Returns how many (owner, kind) it forgot."""
        rows = await self._db.query("SELECT shareusage_forget()")
        return int(rows[0][0])

    # -- failures ------------------------------------------------------------------------

    async def count_failure(
        self, builder: Builder, build_id: int | None, count_build: bool = True
    ) -> tuple[int, int | None]:
        """Count one failure against the builder (and, if ``count_build``, against the
        build); returns the counts.
        """

        async def count(tx: Transaction) -> tuple[int, int | None]:
            row = await tx.query_one(
                "UPDATE builder SET failure_count = failure_count + 1 WHERE id = %s RETURNING failure_count",
                (builder.id,),
            )
            if row is None:
                raise NotFound(f"no builder {builder.id}")
            job_count = None
            if build_id is not None:
                build_row = await tx.query_one(
                    "UPDATE build SET failure_count = failure_count + %s WHERE id = %s RETURNING failure_count",
                    (1 if count_build else 0, build_id),
                )
                job_count = int(build_row[0]) if build_row else None
            return int(row[0]), job_count

        return await self._db.transaction(count)

    async def requeue(
        self,
        job: BuildQueue,
        builder: Builder | None,
        reason: str,
        kind: str = "requeued",
        forgive: bool = False,
    ) -> bool:
        """Send the job back to the queue (its build to NEEDSBUILD), if it is still ``builder``'s;
        it is suspended instead when its archive is disabled.

        ``forgive`` resets the build's failure count (the builder was to blame).

        :returns: whether it was requeued (``False`` when it had moved on meanwhile).
        """

        async def requeue(tx: Transaction) -> bool:
            current = await tx.query_one(
                "SELECT builder, status FROM buildqueue WHERE id = %s FOR UPDATE", (job.id,)
            )
            if current is None or (builder is not None and current[0] != builder.id):
                return False
            if current[1] == BuildQueueStatus.CANCELLING:
                # the job was being cancelled anyway: it ends here
                await set_build_status(tx, job.build_id, BuildStatus.CANCELLED, None, reason)
                await tx.execute("DELETE FROM buildqueue WHERE id = %s", (job.id,))
                return True
            build = await get_build(tx, job.build_id, lock=True)
            if build.status is not BuildStatus.NEEDSBUILD:
                await set_build_status(tx, job.build_id, BuildStatus.NEEDSBUILD, None, reason)
            suspended = await archive_suspension(tx, job.build_id)
            status = BuildQueueStatus.WAITING if suspended is None else BuildQueueStatus.SUSPENDED
            await tx.execute(
                "UPDATE buildqueue SET builder = NULL, status = %s, suspended_reason = %s,"
                " date_started = NULL, logtail = NULL WHERE id = %s",
                (int(status), suspended, job.id),
            )
            builder_id = builder.id if builder else None
            await record_event(tx, kind, reason, build=job.build_id, builder=builder_id)
            if suspended is not None:
                await record_event(
                    tx, "suspended", suspended, build=job.build_id, builder=builder_id
                )
            return True

        return await self._db.transaction(requeue)

    async def fail_job(
        self,
        job: BuildQueue,
        builder: Builder | None,
        reason: str,
        state: BuildStatus = BuildStatus.FAILEDTOBUILD,
    ) -> bool:
        """End the job in ``state`` (e.g. it keeps breaking builders); the reason goes on the build."""

        async def fail(tx: Transaction) -> bool:
            current = await tx.query_one(
                "SELECT builder, status FROM buildqueue WHERE id = %s FOR UPDATE", (job.id,)
            )
            if current is None or (builder is not None and current[0] != builder.id):
                return False
            target = BuildStatus.CANCELLED if current[1] == BuildQueueStatus.CANCELLING else state
            await set_build_status(tx, job.build_id, target, None, reason)
            await tx.execute(
                "UPDATE build SET failure_reason = %s WHERE id = %s", (reason, job.build_id)
            )
            await tx.execute("DELETE FROM buildqueue WHERE id = %s", (job.id,))
            return True

        return await self._db.transaction(fail)

    async def fail_builder(self, builder: Builder, reason: str) -> None:
        """Take the builder out of service automatically (it is re-probed and may come back)."""

        async def fail(tx: Transaction) -> None:
            await tx.execute(
                "UPDATE builder SET builderok = false, failnotes = %s, failed_by_master = true WHERE id = %s",
                (reason, builder.id),
            )
            await record_event(tx, "failed", reason, builder=builder.id)

        await self._db.transaction(fail)

    async def restore_builder(self, builder: Builder, note: str) -> None:
        """An automatically failed builder answers correctly again: back in service."""

        async def restore(tx: Transaction) -> None:
            count = await tx.execute(
                "UPDATE builder SET builderok = true, failnotes = NULL, failed_by_master = false,"
                " failure_count = 0 WHERE id = %s AND failed_by_master",
                (builder.id,),
            )
            if count:
                await record_event(tx, "restored", note, builder=builder.id)

        await self._db.transaction(restore)

    async def set_clean_status(self, builder: Builder, status: BuilderCleanStatus) -> None:
        await self._db.execute(
            "UPDATE builder SET clean_status = %s, date_clean_status_changed = now() WHERE id = %s AND clean_status <> %s",
            (int(status), builder.id, int(status)),
            prepared=True,
        )

    async def set_versions(self, versions: dict[int, str]) -> None:
        """Record the versions builders report: ``{builder id: version}``, one statement."""
        values = ", ".join(["(%s::integer, %s::text)"] * len(versions))
        args: list[Any] = [x for item in versions.items() for x in item]
        await self._db.execute(
            f"UPDATE builder b SET version = v.version FROM (VALUES {values}) AS v(id, version)"
            " WHERE b.id = v.id AND b.version IS DISTINCT FROM v.version",
            args,
        )

    async def mark_building(
        self, job: BuildQueue, builder: Builder, now: datetime.datetime
    ) -> bool:
        """A claimed job turned out to have reached the builder (the master died between
        ``build()`` and recording it; the build may have ended since): record it as
        dispatched now, when it is discovered, so that every build that ends has its
        dispatch, builder and dates."""
        try:
            await self.record_dispatch(job, builder, now, note=DISCOVERED)
        except JobGone:
            return False
        return True

    async def store_logtails(self, tails: Iterable[tuple[int, int, bytes | str | None]]) -> None:
        """Write many jobs' log tails in one statement: ``(job id, builder id, tail)``."""
        batch = list(tails)
        if not batch:
            return
        await self._db.execute(
            "UPDATE buildqueue q SET logtail = v.tail"
            " FROM unnest(%s::integer[], %s::integer[], %s::text[]) AS v(id, builder, tail)"
            " WHERE q.id = v.id AND q.builder = v.builder",
            (
                [job_id for job_id, _, _ in batch],
                [builder_id for _, builder_id, _ in batch],
                [_clean_text(tail) for _, _, tail in batch],
            ),
            prepared=True,
        )

    # -- the end of a build ------------------------------------------------------------

    async def finish(
        self,
        job: BuildQueue,
        builder: Builder,
        state: BuildStatus,
        now: datetime.datetime,
        log: int | None = None,
        files: Sequence[tuple[str, int]] = (),
        dependencies: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Record a collected build, in one statement: its final state, log and files (made
        permanent: they were stored provisional, expiring, in case the master died before
        this); the job leaves the queue; the builder's failure count is reset (it carried
        a build to its end: a dispatch alone proves nothing, a builder may lose every build
        it accepts). Builds that end at about the same moment share a statement.

        :returns: ``False`` when the job is no longer this builder's (already collected).
        :raises IllegalTransition: when the build may not end in ``state``.
        """
        return await self.finishes.submit(
            _Finished(job, builder, state, now, log, tuple(files), dependencies, reason)
        )

    async def _finish_many(self, fs: list[_Finished]) -> list[bool | IllegalTransition]:
        keep = [(f.job.id, alias) for f in fs for alias in f.keep]
        rows = await self._db.query(
            _FINISH_SQL,
            {
                "jobs": [f.job.id for f in fs],
                "builders": [f.builder.id for f in fs],
                "states": [int(f.state) for f in fs],
                "nows": [f.now for f in fs],
                "logs": [f.log for f in fs],
                "dependencies": [f.dependencies for f in fs],
                "reasons": [f.reason for f in fs],
                "messages": [f.message for f in fs],
                "file_jobs": [f.job.id for f in fs for _ in f.files],
                "file_aliases": [alias for f in fs for _, alias in f.files],
                "file_names": [name for f in fs for name, _ in f.files],
                "keep_jobs": [job for job, _ in keep],
                "keep_aliases": [alias for _, alias in keep],
            },
            prepared=True,
        )
        found = {row[0]: row[1:] for row in rows}
        return [f.outcome(*found[f.job.id]) for f in fs]

    # -- operations on builds ----------------------------------------------------------

    async def cancel(self, build: HasId | int) -> BuildStatus:
        """Cancel a build: a waiting one is CANCELLED at once; a running one becomes
        CANCELLING (the master aborts it on the builder). Returns the new state.

        :raises IllegalTransition: for a build that has already ended.
        """

        async def cancel(tx: Transaction) -> BuildStatus:
            b = await get_build(tx, id_of(build), lock=True)
            job_row = await tx.query_one(
                f"SELECT {QUEUE_COLUMNS} FROM buildqueue q WHERE q.build = %s FOR UPDATE", (b.id,)
            )
            job = queue_from_row(job_row) if job_row else None
            if b.status is BuildStatus.CANCELLING:
                return b.status
            if job is not None and job.builder_id is not None and b.status is BuildStatus.BUILDING:
                await set_build_status(tx, b.id, BuildStatus.CANCELLING, None, "cancel requested")
                await tx.execute(
                    "UPDATE buildqueue SET status = %s WHERE id = %s",
                    (int(BuildQueueStatus.CANCELLING), job.id),
                )
                return BuildStatus.CANCELLING
            check_transition(b.status, BuildStatus.CANCELLED, b.id)
            await set_build_status(tx, b.id, BuildStatus.CANCELLED, None, "cancelled")
            if job is not None:
                await tx.execute("DELETE FROM buildqueue WHERE id = %s", (job.id,))
            return BuildStatus.CANCELLED

        return await self._db.transaction(cancel)

    async def retry(self, build: HasId | int) -> BuildQueue:
        """Retry a failed or cancelled build: NEEDSBUILD with a fresh score (its job is
        suspended at once when its archive is disabled).

        :raises IllegalTransition: unless the build is in a retryable state.
        """

        async def retry(tx: Transaction) -> BuildQueue:
            b = await get_build(tx, id_of(build), lock=True)
            if b.status not in RETRYABLE:
                check_transition(b.status, BuildStatus.NEEDSBUILD, b.id)
                raise ValueError(f"build {b.id} is {b.status.name}: only ended builds are retried")
            await set_build_status(tx, b.id, BuildStatus.NEEDSBUILD, None, "retried")
            await tx.execute(
                "UPDATE build SET failure_count = 0, dependencies = NULL, log = NULL WHERE id = %s",
                (b.id,),
            )
            await tx.execute("DELETE FROM buildfile WHERE build = %s", (b.id,))
            return await enqueue(tx, b)

        return await self._db.transaction(retry)

    async def rescore(self, build: HasId | int, score: int) -> BuildQueue:
        """Give a queued build a manual score, which sticks.

        :raises NotFound: when the build is not in the queue.
        """

        async def rescore(tx: Transaction) -> BuildQueue:
            row = await tx.query_one(
                "UPDATE buildqueue SET lastscore = %s, manual = true WHERE build = %s RETURNING id",
                (score, id_of(build)),
            )
            if row is None:
                raise NotFound(f"build {id_of(build)} is not in the queue")
            await record_event(tx, "rescored", f"manual score {score}", build=id_of(build))
            return await get_queue_entry(tx, row[0])

        return await self._db.transaction(rescore)
