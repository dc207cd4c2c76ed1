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
