"""Archives: a distribution's primary and partner archives, copy archives and PPAs."""

from __future__ import annotations

import re
import secrets
from typing import Any

from buildmaster.enums import ArchivePurpose
from buildmaster.model import Archive, HasId, id_of
from buildmaster.store.database import Database, NotFound, Transaction

__all__ = [
    "ArchiveSet",
    "ARCHIVE_COLUMNS",
    "archive_columns",
    "disabled_reason",
    "disabled_reason_sql",
    "archive_suspension",
    "BUILDD_SECRET",
    "archive_from_row",
    "new_buildd_secret",
]

#: What a private archive's password for builders may be (the schema checks the same).
BUILDD_SECRET = re.compile(r"[A-Za-z0-9_-]{16,}")


def new_buildd_secret() -> str:
    return secrets.token_urlsafe(24)


def archive_columns(a: str = "a", p: str = "p", d: str = "d") -> str:
    """The columns :func:`archive_from_row` reads, for the aliases of archive, its owner
    (person) and its distribution."""
    return (
        f"{a}.id, {a}.owner, {p}.name, {a}.distribution, {d}.name, {a}.name, {a}.displayname,"
        f" {a}.purpose, {a}.private, {a}.require_virtualized, {a}.relative_build_score,"
        f" {a}.enabled, {a}.buildd_secret"
    )


ARCHIVE_COLUMNS = archive_columns()
ARCHIVE_FROM = (
    "archive a JOIN person p ON p.id = a.owner JOIN distribution d ON d.id = a.distribution"
)


def disabled_reason(archive: Archive) -> str:
    """Why the jobs of a disabled archive are suspended (``buildqueue.suspended_reason``)."""
    return f"the archive {archive.reference} is disabled"


def disabled_reason_sql(a: str = "a", p: str = "p", d: str = "d") -> str:
    """:func:`disabled_reason` in SQL, for the aliases of archive, its owner and its
    distribution (the reference as :attr:`Archive.reference` makes it)."""
    reference = (
        f"CASE {a}.purpose WHEN {int(ArchivePurpose.PPA)}"
        f" THEN '~' || {p}.name || '/' || {d}.name || '/' || {a}.name"
        f" WHEN {int(ArchivePurpose.PRIMARY)} THEN {d}.name"
        f" ELSE {d}.name || '/' || {a}.name END"
    )
    return f"('the archive ' || {reference} || ' is disabled')"


_PURPOSES = {int(p): p for p in ArchivePurpose}


def archive_from_row(row: tuple[Any, ...]) -> Archive:
    return Archive(
        id=row[0],
        owner_id=row[1],
        owner_name=row[2],
        distribution_id=row[3],
        distribution_name=row[4],
        name=row[5],
        displayname=row[6],
        purpose=_PURPOSES[row[7]],
        private=row[8],
        require_virtualized=row[9],
        relative_build_score=row[10],
        enabled=row[11],
        buildd_secret=row[12],
    )


async def archive_suspension(tx: Transaction, build_id: int) -> str | None:
    """Why a job of the build that would wait must be suspended instead: its archive is
    disabled (:meth:`~buildmaster.store.archives.ArchiveSet.set_enabled`); ``None`` when
    it is enabled."""
    row = await tx.query_one(
        f"SELECT a.enabled, {disabled_reason_sql()} FROM build b"
        f" JOIN {ARCHIVE_FROM} ON a.id = b.archive WHERE b.id = %s",
        (build_id,),
    )
    return None if row is None or row[0] else str(row[1])


class ArchiveSet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def new(
        self,
        owner: HasId | int,
        distribution: HasId | int,
        purpose: ArchivePurpose,
        name: str | None = None,
        displayname: str = "",
        private: bool = False,
        require_virtualized: bool | None = None,
        relative_build_score: int = 0,
    ) -> Archive:
        """Create an archive. A PPA always requires virtualized builders (its code is untrusted).

        ``name`` defaults to ``primary``/``partner``/``ppa`` by purpose. A private archive gets
        a new password for builders (:meth:`set_buildd_secret` replaces it).
        """
        if name is None:
            name = {ArchivePurpose.PRIMARY: "primary", ArchivePurpose.PARTNER: "partner"}.get(
                purpose, "ppa"
            )
        if require_virtualized is None:
            require_virtualized = purpose is ArchivePurpose.PPA

        async def create(tx: Transaction) -> int:
            row = await tx.query_one(
                "INSERT INTO archive (owner, distribution, name, displayname, purpose, private,"
                " require_virtualized, relative_build_score, buildd_secret)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    id_of(owner),
                    id_of(distribution),
                    name,
                    displayname,
                    int(purpose),
                    private,
                    require_virtualized,
                    relative_build_score,
                    new_buildd_secret() if private else None,
                ),
            )
            assert row is not None
            return int(row[0])

        return await self.get(await self._db.transaction(create))

    async def get(self, archive: HasId | int) -> Archive:
        rows = await self._db.query(
            f"SELECT {ARCHIVE_COLUMNS} FROM {ARCHIVE_FROM} WHERE a.id = %s", (id_of(archive),)
        )
        if not rows:
            raise NotFound(f"no archive {id_of(archive)}")
        return archive_from_row(rows[0])

    async def get_primary(self, distribution: HasId | int) -> Archive:
        """The distribution's primary archive (its ``main_archive``)."""
        rows = await self._db.query(
            f"SELECT {ARCHIVE_COLUMNS} FROM {ARCHIVE_FROM} WHERE a.distribution = %s AND a.purpose = %s",
            (id_of(distribution), int(ArchivePurpose.PRIMARY)),
        )
        if not rows:
            raise NotFound(f"distribution {id_of(distribution)} has no primary archive")
        return archive_from_row(rows[0])

    async def getPPAByName(
        self, owner: HasId | int, name: str = "ppa", distribution: HasId | int | None = None
    ) -> Archive:
        """The PPA ``name`` of ``owner`` (in ``distribution``, when given)."""
        sql = f"SELECT {ARCHIVE_COLUMNS} FROM {ARCHIVE_FROM} WHERE a.owner = %s AND a.name = %s AND a.purpose = %s"
        args: tuple[Any, ...] = (id_of(owner), name, int(ArchivePurpose.PPA))
        if distribution is not None:
            sql += " AND a.distribution = %s"
            args += (id_of(distribution),)
        rows = await self._db.query(sql + " ORDER BY a.id LIMIT 1", args)
        if not rows:
            raise NotFound(f"person {id_of(owner)} has no PPA called {name!r}")
        return archive_from_row(rows[0])

    async def set_relative_build_score(self, archive: HasId | int, score: int) -> Archive:
        await self._db.execute(
            "UPDATE archive SET relative_build_score = %s WHERE id = %s", (score, id_of(archive))
        )
        return await self.get(archive)

    async def set_private(self, archive: HasId | int, private: bool) -> Archive:
        """Make an archive private (it gets a password for builders if it has none) or
        public."""
        await self._db.execute(
            "UPDATE archive SET private = %(private)s,"
            " buildd_secret = CASE WHEN %(private)s THEN coalesce(buildd_secret, %(secret)s)"
            "  ELSE buildd_secret END WHERE id = %(id)s",
            {"private": private, "secret": new_buildd_secret(), "id": id_of(archive)},
        )
        return await self.get(archive)

    async def set_buildd_secret(self, archive: HasId | int, secret: str | None) -> Archive:
        """Set the password builders use to read a private archive (the one its web server
        accepts for the user ``buildd``): at least 16 of ``A-Z a-z 0-9 _ -``."""
        if secret is not None and not BUILDD_SECRET.fullmatch(secret):
            raise ValueError(
                "a buildd secret must be at least 16 characters of A-Z, a-z, 0-9, '_' and '-'"
            )
        await self._db.execute(
            "UPDATE archive SET buildd_secret = %s WHERE id = %s", (secret, id_of(archive))
        )
        return await self.get(archive)

    async def set_enabled(self, archive: HasId | int, enabled: bool) -> Archive:
        """Disable or enable an archive, with its jobs, in one transaction.

        Disabled: its waiting jobs are suspended (the reason names the archive, a
        "suspended" event each); its jobs on builders go on to the end. Nothing puts a
        disabled archive's job back in the queue (a chroot's arrival, the end of a wait, a
        retry, a builder giving it back: :mod:`buildmaster.store.jobs`) until it is enabled.

        Enabled (when it was disabled): its jobs suspended without a time to come back go
        back in the queue (a "resumed" event each); one whose architecture has no chroot is
        suspended again when a builder tries it, as a new job would be. Those that wait for
        the master's side keep their time to come back (:meth:`JobQueries.resume_due`).
        """

        async def change(tx: Transaction) -> None:
            row = await tx.query_one(
                "SELECT enabled FROM archive WHERE id = %s FOR UPDATE", (id_of(archive),)
            )
            if row is None:
                raise NotFound(f"no archive {id_of(archive)}")
            if enabled and row[0]:
                return  # enabled already: its suspended jobs wait for something else
            await tx.execute(
                "UPDATE archive SET enabled = %s WHERE id = %s", (enabled, id_of(archive))
            )
            if enabled:
                await tx.execute(
                    "WITH q AS (UPDATE buildqueue SET status = 0, suspended_reason = NULL"
                    "  FROM build b WHERE b.id = buildqueue.build AND b.archive = %s"
                    "  AND buildqueue.status = 2 AND buildqueue.resume_after IS NULL"
                    "  RETURNING buildqueue.build)"
                    " INSERT INTO event (build, kind, message)"
                    " SELECT build, 'resumed', 'back in the queue: its archive is enabled' FROM q",
                    (id_of(archive),),
                )
            else:
                await tx.execute(
                    f"WITH q AS (UPDATE buildqueue SET status = 2,"
                    f"  suspended_reason = {disabled_reason_sql()}, resume_after = NULL"
                    f"  FROM build b JOIN {ARCHIVE_FROM} ON a.id = b.archive"
                    "  WHERE b.id = buildqueue.build AND a.id = %s"
                    "  AND buildqueue.status = 0 AND buildqueue.builder IS NULL"
                    "  RETURNING buildqueue.build, buildqueue.suspended_reason)"
                    " INSERT INTO event (build, kind, message)"
                    " SELECT build, 'suspended', suspended_reason FROM q",
                    (id_of(archive),),
                )

        await self._db.transaction(change)
        return await self.get(archive)
