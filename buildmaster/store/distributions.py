"""Processors, people, distributions, their series and architectures (with chroots)."""

from __future__ import annotations

from typing import Any

from buildmaster.model import (
    Distribution,
    DistroArchSeries,
    DistroSeries,
    HasId,
    LibraryFile,
    Person,
    Processor,
    id_of,
)
from buildmaster.store.database import Database, NotFound, Transaction
from buildmaster.store.files import LIBRARYFILE_COLUMNS, LIBRARYFILE_JOIN, library_file_from_row

__all__ = ["ProcessorSet", "PersonSet", "DistributionSet"]


async def _one(db: Database, sql: str, args: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    rows = await db.query(sql, args)
    if not rows:
        raise NotFound(what)
    return rows[0]


async def _returning_one(tx: Transaction, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    row = await tx.query_one(sql, args)
    assert row is not None, "INSERT ... RETURNING returned nothing"
    return row


class ProcessorSet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def new(self, name: str, title: str = "") -> Processor:
        async def create(tx: Transaction) -> Processor:
            row = await _returning_one(
                tx,
                "INSERT INTO processor (name, title) VALUES (%s, %s) RETURNING id",
                (name, title),
            )
            return Processor(row[0], name, title)

        return await self._db.transaction(create)

    async def getByName(self, name: str) -> Processor:
        row = await _one(
            self._db,
            "SELECT id, name, title FROM processor WHERE name = %s",
            (name,),
            f"no processor {name!r}",
        )
        return Processor(*row)

    async def all(self) -> list[Processor]:
        rows = await self._db.query("SELECT id, name, title FROM processor ORDER BY name")
        return [Processor(*r) for r in rows]


class PersonSet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def new(self, name: str, displayname: str) -> Person:
        async def create(tx: Transaction) -> Person:
            row = await _returning_one(
                tx,
                "INSERT INTO person (name, displayname) VALUES (%s, %s) RETURNING id",
                (name, displayname),
            )
            return Person(row[0], name, displayname)

        return await self._db.transaction(create)

    async def getByName(self, name: str) -> Person:
        row = await _one(
            self._db,
            "SELECT id, name, displayname FROM person WHERE name = %s",
            (name,),
            f"no person {name!r}",
        )
        return Person(*row)


_SERIES_COLUMNS = "s.id, s.distribution, d.name, s.name, s.version"
_SERIES_FROM = "distroseries s JOIN distribution d ON d.id = s.distribution"
_DAS_COLUMNS = (
    "das.id, das.distroseries, d.id, d.name, s.name, das.architecturetag, das.processor, p.name,"
    " das.chroot, das.enabled"
)
_DAS_FROM = (
    "distroarchseries das JOIN distroseries s ON s.id = das.distroseries"
    " JOIN distribution d ON d.id = s.distribution JOIN processor p ON p.id = das.processor"
)


class DistributionSet:
    """Distributions, their series and their architectures."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def new(self, name: str, displayname: str, owner: HasId | int) -> Distribution:
        async def create(tx: Transaction) -> Distribution:
            row = await _returning_one(
                tx,
                "INSERT INTO distribution (name, displayname, owner) VALUES (%s, %s, %s) RETURNING id",
                (name, displayname, id_of(owner)),
            )
            return Distribution(row[0], name, displayname, id_of(owner))

        return await self._db.transaction(create)

    async def getByName(self, name: str) -> Distribution:
        row = await _one(
            self._db,
            "SELECT id, name, displayname, owner FROM distribution WHERE name = %s",
            (name,),
            f"no distribution {name!r}",
        )
        return Distribution(*row)

    async def new_series(self, distribution: HasId | int, name: str, version: str) -> DistroSeries:
        async def create(tx: Transaction) -> int:
            row = await _returning_one(
                tx,
                "INSERT INTO distroseries (distribution, name, version) VALUES (%s, %s, %s) RETURNING id",
                (id_of(distribution), name, version),
            )
            return int(row[0])

        series_id = await self._db.transaction(create)
        return await self.get_series_by_id(series_id)

    async def get_series_by_id(self, series_id: int) -> DistroSeries:
        row = await _one(
            self._db,
            f"SELECT {_SERIES_COLUMNS} FROM {_SERIES_FROM} WHERE s.id = %s",
            (series_id,),
            f"no distroseries {series_id}",
        )
        return DistroSeries(*row)

    async def getSeries(self, distribution: HasId | int, name: str) -> DistroSeries:
        row = await _one(
            self._db,
            f"SELECT {_SERIES_COLUMNS} FROM {_SERIES_FROM} WHERE s.distribution = %s AND s.name = %s",
            (id_of(distribution), name),
            f"no series {name!r} in distribution {id_of(distribution)}",
        )
        return DistroSeries(*row)

    async def new_arch_series(
        self, series: HasId | int, architecturetag: str, processor: HasId | int
    ) -> DistroArchSeries:
        async def create(tx: Transaction) -> int:
            row = await _returning_one(
                tx,
                "INSERT INTO distroarchseries (distroseries, architecturetag, processor)"
                " VALUES (%s, %s, %s) RETURNING id",
                (id_of(series), architecturetag, id_of(processor)),
            )
            return int(row[0])

        das_id = await self._db.transaction(create)
        return await self.get_arch_series_by_id(das_id)

    async def get_arch_series_by_id(self, das_id: int) -> DistroArchSeries:
        row = await _one(
            self._db,
            f"SELECT {_DAS_COLUMNS} FROM {_DAS_FROM} WHERE das.id = %s",
            (das_id,),
            f"no distroarchseries {das_id}",
        )
        return DistroArchSeries(*row)

    async def get_arch_series(self, series: HasId | int, architecturetag: str) -> DistroArchSeries:
        row = await _one(
            self._db,
            f"SELECT {_DAS_COLUMNS} FROM {_DAS_FROM} WHERE das.distroseries = %s AND das.architecturetag = %s",
            (id_of(series), architecturetag),
            f"no architecture {architecturetag!r} in series {id_of(series)}",
        )
        return DistroArchSeries(*row)

    async def all_arch_series(self) -> list[DistroArchSeries]:
        rows = await self._db.query(f"SELECT {_DAS_COLUMNS} FROM {_DAS_FROM} ORDER BY das.id")
        return [DistroArchSeries(*r) for r in rows]

    async def lookup(
        self, distribution: str, series: str, architecturetag: str
    ) -> DistroArchSeries:
        """``ubuntu``, ``hoary``, ``i386`` -> the distroarchseries."""
        row = await _one(
            self._db,
            f"SELECT {_DAS_COLUMNS} FROM {_DAS_FROM}"
            " WHERE d.name = %s AND s.name = %s AND das.architecturetag = %s",
            (distribution, series, architecturetag),
            f"no architecture {distribution}/{series}/{architecturetag}",
        )
        return DistroArchSeries(*row)

    async def addOrUpdateChroot(
        self, distroarchseries: HasId | int, chroot: HasId | int
    ) -> DistroArchSeries:
        """Make the librarian file ``chroot`` the chroot tarball of the architecture."""
        count_rows = await self._db.query(
            "UPDATE distroarchseries SET chroot = %s WHERE id = %s RETURNING id",
            (id_of(chroot), id_of(distroarchseries)),
        )
        if not count_rows:
            raise NotFound(f"no distroarchseries {id_of(distroarchseries)}")
        return await self.get_arch_series_by_id(id_of(distroarchseries))

    async def get_chroot(self, distroarchseries: HasId | int) -> LibraryFile | None:
        """The chroot of the architecture, or ``None`` when it has none."""
        rows = await self._db.query(
            f"SELECT {LIBRARYFILE_COLUMNS} FROM distroarchseries das"
            f" JOIN {LIBRARYFILE_JOIN} ON lfa.id = das.chroot WHERE das.id = %s",
            (id_of(distroarchseries),),
        )
        return library_file_from_row(rows[0]) if rows else None
