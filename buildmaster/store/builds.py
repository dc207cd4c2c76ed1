"""Builds (source release x architecture x archive x pocket) and their queue entries."""

from __future__ import annotations

import datetime
from typing import Any

from buildmaster.enums import (
    ArchivePurpose,
    BuildQueueStatus,
    BuildStatus,
    PackagePublishingPocket,
    SourcePackageUrgency,
)
from buildmaster.model import Build, Builder, BuildFile, BuildQueue, HasId, id_of
from buildmaster.policy import builder_may_take_jobs
from buildmaster.scoring import ScoreInputs, score_build
from buildmaster.store.archives import archive_suspension
from buildmaster.store.database import Database, NotFound, Transaction
from buildmaster.store.events import record_event
from buildmaster.store.files import LIBRARYFILE_COLUMNS, LIBRARYFILE_JOIN, library_file_from_row
from buildmaster.transitions import check_transition

__all__ = [
    "build_columns",
    "queue_columns",
    "BUILD_WIDTH",
    "QUEUE_WIDTH",
    "BuildSet",
    "BuildQueueSet",
    "BUILD_COLUMNS",
    "build_from_row",
    "QUEUE_COLUMNS",
    "queue_from_row",
    "get_build",
    "get_queue_entry",
    "set_build_status",
    "score_inputs",
    "insert_build",
    "queue_build",
    "enqueue",
]


def build_columns(alias: str = "b") -> str:
    """The columns :func:`build_from_row` reads, from ``build`` aliased ``alias``."""
    names = (
        "id, sourcepackagerelease, distroarchseries, archive, pocket, processor, virtualized,"
        " buildstate, datecreated, date_started, date_first_dispatched, date_finished, builder,"
        " log, dependencies, failure_count, failure_reason"
    )
    return ", ".join(f"{alias}.{n.strip()}" for n in names.split(","))


def queue_columns(alias: str = "q") -> str:
    """The columns :func:`queue_from_row` reads, from ``buildqueue`` aliased ``alias``."""
    names = "id, build, builder, status, lastscore, manual, processor, virtualized, date_started, logtail"
    return ", ".join(f"{alias}.{n.strip()}" for n in names.split(","))


BUILD_COLUMNS = build_columns("b")
BUILD_WIDTH = 17
QUEUE_COLUMNS = queue_columns("q")
QUEUE_WIDTH = 10


#: enumerations by value (a dictionary lookup is a tenth of ``Enum(value)``'s cost, and
#: listings read thousands of rows)
_POCKETS = {int(p): p for p in PackagePublishingPocket}
_BUILD_STATES = {int(s): s for s in BuildStatus}
_QUEUE_STATES = {int(s): s for s in BuildQueueStatus}


def build_from_row(row: tuple[Any, ...]) -> Build:
    return Build(
        id=row[0],
        sourcepackagerelease_id=row[1],
        distroarchseries_id=row[2],
        archive_id=row[3],
        pocket=_POCKETS[row[4]],
        processor_id=row[5],
        virtualized=row[6],
        status=_BUILD_STATES[row[7]],
        datecreated=row[8],
        date_started=row[9],
        date_first_dispatched=row[10],
        date_finished=row[11],
        builder_id=row[12],
        log_id=row[13],
        dependencies=row[14],
        failure_count=row[15],
        failure_reason=row[16],
    )


def queue_from_row(row: tuple[Any, ...]) -> BuildQueue:
    return BuildQueue(
        id=row[0],
        build_id=row[1],
        builder_id=row[2],
        status=_QUEUE_STATES[row[3]],
        lastscore=row[4],
        manual=row[5],
        processor_id=row[6],
        virtualized=row[7],
        date_started=row[8],
        logtail=row[9],
    )


async def get_build(tx: Transaction, build_id: int, lock: bool = False) -> Build:
    row = await tx.query_one(
        f"SELECT {BUILD_COLUMNS} FROM build b WHERE b.id = %s" + (" FOR UPDATE" if lock else ""),
        (build_id,),
    )
    if row is None:
        raise NotFound(f"no build {build_id}")
    return build_from_row(row)


async def get_queue_entry(tx: Transaction, job_id: int, lock: bool = False) -> BuildQueue:
    row = await tx.query_one(
        f"SELECT {QUEUE_COLUMNS} FROM buildqueue q WHERE q.id = %s"
        + (" FOR UPDATE" if lock else ""),
        (job_id,),
    )
    if row is None:
        raise NotFound(f"no build queue entry {job_id}")
    return queue_from_row(row)


async def set_build_status(
    tx: Transaction,
    build_id: int,
    status: BuildStatus,
    now: datetime.datetime | None = None,
    reason: str | None = None,
) -> Build:
    """Change a build's state inside the caller's transaction, checking the transition.

    Ending states get ``date_finished``; a build sent back to NEEDSBUILD loses its builder
    and dates. The change is recorded in the build's history (with ``reason``).

    :raises IllegalTransition: when the rules forbid it.
    """
    build = await get_build(tx, build_id, lock=True)
    check_transition(build.status, status, build_id)
    if status is BuildStatus.NEEDSBUILD:
        await tx.execute(
            "UPDATE build SET buildstate = %s, builder = NULL, date_started = NULL, date_finished = NULL,"
            " failure_reason = NULL WHERE id = %s",
            (int(status), build_id),
        )
    elif status in (
        BuildStatus.BUILDING,
        BuildStatus.CANCELLING,
        BuildStatus.GATHERING,
        BuildStatus.UPLOADING,
    ):
        await tx.execute("UPDATE build SET buildstate = %s WHERE id = %s", (int(status), build_id))
    else:
        await tx.execute(
            "UPDATE build SET buildstate = %s, date_finished = coalesce(%s, now()),"
            " failure_reason = coalesce(%s, failure_reason) WHERE id = %s",
            (int(status), now, reason, build_id),
        )
    message = f"{build.status.name} -> {status.name}" + (f": {reason}" if reason else "")
    await record_event(tx, "state", message, build=build_id, builder=build.builder_id)
    return await get_build(tx, build_id)


async def score_inputs(tx: Transaction, build_id: int) -> ScoreInputs:
    row = await tx.query_one(
        "SELECT a.purpose, a.private, a.relative_build_score, spr.urgency, b.pocket, c.name, spr.section"
        " FROM build b JOIN archive a ON a.id = b.archive"
        " JOIN sourcepackagerelease spr ON spr.id = b.sourcepackagerelease"
        " JOIN component c ON c.id = spr.component WHERE b.id = %s",
        (build_id,),
    )
    if row is None:
        raise NotFound(f"no build {build_id}")
    return ScoreInputs(
        archive_purpose=ArchivePurpose(row[0]),
        archive_private=row[1],
        relative_build_score=row[2],
        urgency=SourcePackageUrgency(row[3]),
        pocket=PackagePublishingPocket(row[4]),
        component=row[5],
        section=row[6],
    )


async def insert_build(
    tx: Transaction,
    sourcepackagerelease: HasId | int,
    distroarchseries: HasId | int,
    pocket: PackagePublishingPocket,
    archive: HasId | int,
) -> Build:
    """:meth:`BuildSet.createBuild` inside the caller's transaction."""
    row = await tx.query_one(
        "INSERT INTO build (sourcepackagerelease, distroarchseries, archive, pocket, processor,"
        " virtualized)"
        " SELECT %s, das.id, a.id, %s, das.processor, a.require_virtualized"
        " FROM distroarchseries das, archive a WHERE das.id = %s AND a.id = %s RETURNING id",
        (id_of(sourcepackagerelease), int(pocket), id_of(distroarchseries), id_of(archive)),
    )
    if row is None:
        raise NotFound(f"no distroarchseries {id_of(distroarchseries)} or archive {id_of(archive)}")
    await record_event(tx, "created", "build created", build=row[0])
    return await get_build(tx, row[0])


async def queue_build(tx: Transaction, build: HasId | int) -> BuildQueue:
    """:meth:`BuildQueueSet.createBuildQueueEntry` inside the caller's transaction."""
    b = await get_build(tx, id_of(build), lock=True)
    if b.status is not BuildStatus.NEEDSBUILD:
        raise ValueError(f"build {b.id} is {b.status.name}: only NEEDSBUILD builds are queued")
    return await enqueue(tx, b)


async def enqueue(tx: Transaction, b: Build) -> BuildQueue:
    """A queue entry for the (NEEDSBUILD, locked) build, scored: waiting, or suspended
    when its archive is disabled."""
    score = score_build(await score_inputs(tx, b.id))
    suspended = await archive_suspension(tx, b.id)
    row = await tx.query_one(
        "INSERT INTO buildqueue (build, lastscore, processor, virtualized, status,"
        " suspended_reason) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (
            b.id,
            score,
            b.processor_id,
            b.virtualized,
            int(BuildQueueStatus.WAITING if suspended is None else BuildQueueStatus.SUSPENDED),
            suspended,
        ),
    )
    assert row is not None
    await record_event(tx, "queued", f"queued with score {score}", build=b.id)
    if suspended is not None:
        await record_event(tx, "suspended", suspended, build=b.id)
    return await get_queue_entry(tx, row[0])


_CANDIDATE_ID = (
    "SELECT buildqueue_candidate(%(processors)s::integer[], %(virtualized)s, %(avoid)s::integer[])"
)
"""The id of the job a builder takes, locked (other transactions skip it): the rules of
:mod:`buildmaster.fairshare` (aged jobs first, then the owner with the largest deficit that
the reserve does not hold back, its best score first), in the database function of
migrations 0008 and 0011."""


class _Peeked(Exception):
    """Rolls back a look at the candidate (its lock goes with the transaction)."""

    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row


class BuildSet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def createBuild(
        self,
        sourcepackagerelease: HasId | int,
        distroarchseries: HasId | int,
        pocket: PackagePublishingPocket,
        archive: HasId | int,
    ) -> Build:
        """A new NEEDSBUILD build of the release for the architecture, in the archive and pocket.

        The build needs virtualized builders when its archive requires them.

        :raises ConstraintViolation: when the same build is already live.
        """
        return await self._db.transaction(
            insert_build, sourcepackagerelease, distroarchseries, pocket, archive
        )

    async def get(self, build: HasId | int) -> Build:
        rows = await self._db.query(
            f"SELECT {BUILD_COLUMNS} FROM build b WHERE b.id = %s", (id_of(build),)
        )
        if not rows:
            raise NotFound(f"no build {id_of(build)}")
        return build_from_row(rows[0])

    async def set_status(
        self, build: HasId | int, status: BuildStatus, reason: str | None = None
    ) -> Build:
        """Change a build's state (checked against the transition table).

        :raises IllegalTransition: when the rules forbid the change.
        """
        return await self._db.transaction(set_build_status, id_of(build), status, None, reason)

    async def files(self, build: HasId | int) -> list[BuildFile]:
        """The files the build produced (results collected from the builder)."""
        rows = await self._db.query(
            f"SELECT bf.build, bf.filename, {LIBRARYFILE_COLUMNS}"
            f" FROM buildfile bf JOIN {LIBRARYFILE_JOIN} ON lfa.id = bf.libraryfile"
            " WHERE bf.build = %s ORDER BY bf.filename",
            (id_of(build),),
        )
        return [BuildFile(r[0], r[1], library_file_from_row(r[2:])) for r in rows]


class BuildQueueSet:
    """The queue: one entry (a job) per build that is waiting or running."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def createBuildQueueEntry(self, build: HasId | int) -> BuildQueue:
        """Queue a NEEDSBUILD build, scored.

        :raises ConstraintViolation: when the build is already queued.
        """
        return await self._db.transaction(queue_build, build)

    async def get(self, job: HasId | int) -> BuildQueue:
        """The queue entry. :raises NotFound:"""
        rows = await self._db.query(
            f"SELECT {QUEUE_COLUMNS} FROM buildqueue q WHERE q.id = %s", (id_of(job),)
        )
        if not rows:
            raise NotFound(f"no build queue entry {id_of(job)}")
        return queue_from_row(rows[0])

    async def get_for_build(self, build: HasId | int) -> BuildQueue | None:
        rows = await self._db.query(
            f"SELECT {QUEUE_COLUMNS} FROM buildqueue q WHERE q.build = %s", (id_of(build),)
        )
        return queue_from_row(rows[0]) if rows else None

    async def get_for_builder(self, builder: HasId | int) -> BuildQueue | None:
        rows = await self._db.query(
            f"SELECT {QUEUE_COLUMNS} FROM buildqueue q WHERE q.builder = %s", (id_of(builder),)
        )
        return queue_from_row(rows[0]) if rows else None

    async def destroySelf(self, job: HasId | int) -> None:
        """Remove the queue entry (the build itself stays). :raises NotFound:"""

        async def destroy(tx: Transaction) -> None:
            row = await tx.query_one(
                "DELETE FROM buildqueue WHERE id = %s RETURNING build, builder", (id_of(job),)
            )
            if row is None:
                raise NotFound(f"no build queue entry {id_of(job)}")
            await record_event(
                tx, "dequeued", "removed from the queue", build=row[0], builder=row[1]
            )

        await self._db.transaction(destroy)

    async def findBuildCandidate(self, builder: Builder) -> BuildQueue | None:
        """The best waiting job for ``builder``, without claiming it.

        Best means: for one of the builder's processors, virtualized exactly when the builder
        is, by the rules of :mod:`buildmaster.fairshare` (the job :meth:`JobQueries.claim_next`
        would claim now: it is looked at in a transaction rolled back at once). Builders that
        are not ok, in manual mode or inactive get nothing.
        """
        if not builder_may_take_jobs(builder):
            return None
        args = {
            "processors": list(builder.processor_ids),
            "virtualized": builder.virtualized,
            "avoid": [],
        }

        async def peek(tx: Transaction) -> None:
            raise _Peeked(
                await tx.query_one(
                    f"SELECT {QUEUE_COLUMNS} FROM buildqueue q WHERE q.id = ({_CANDIDATE_ID})",
                    args,
                )
            )

        try:
            await self._db.transaction(peek)
        except _Peeked as peeked:
            return queue_from_row(peeked.row) if peeked.row else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def count_waiting(self) -> int:
        rows = await self._db.query(
            "SELECT count(*) FROM buildqueue WHERE status = %s", (int(BuildQueueStatus.WAITING),)
        )
        return int(rows[0][0])
