"""Source package releases and their files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buildmaster.enums import SourcePackageFileType, SourcePackageUrgency
from buildmaster.model import HasId, SourcePackageRelease, SourcePackageReleaseFile, id_of
from buildmaster.store.database import Database, NotFound, Transaction
from buildmaster.store.files import LIBRARYFILE_COLUMNS, LIBRARYFILE_JOIN, library_file_from_row

__all__ = ["SourcePackageReleaseSet", "SPR_COLUMNS", "spr_from_row"]

SPR_COLUMNS = "spr.id, spr.name, spr.version, c.name, spr.section, spr.urgency, spr.upload_distroseries, spr.creator"
SPR_FROM = "sourcepackagerelease spr JOIN component c ON c.id = spr.component"


def spr_from_row(row: tuple[Any, ...]) -> SourcePackageRelease:
    return SourcePackageRelease(
        id=row[0],
        name=row[1],
        version=row[2],
        component=row[3],
        section=row[4],
        urgency=SourcePackageUrgency(row[5]),
        upload_distroseries_id=row[6],
        creator_id=row[7],
    )


async def add_file(
    tx: Transaction, spr_id: int, alias_id: int, filetype: SourcePackageFileType
) -> None:
    await tx.execute(
        "INSERT INTO sourcepackagereleasefile (sourcepackagerelease, libraryfile, filetype) VALUES (%s, %s, %s)",
        (spr_id, alias_id, int(filetype)),
    )


class SourcePackageReleaseSet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def new(
        self,
        name: str,
        version: str,
        upload_distroseries: HasId | int,
        component: str = "main",
        section: str = "misc",
        urgency: SourcePackageUrgency = SourcePackageUrgency.LOW,
        creator: HasId | int | None = None,
        files: Sequence[tuple[HasId | int, SourcePackageFileType]] = (),
    ) -> SourcePackageRelease:
        """Create a source package release with its files (librarian aliases).

        :raises NotFound: for an unknown component.
        """

        async def create(tx: Transaction) -> int:
            row = await tx.query_one("SELECT id FROM component WHERE name = %s", (component,))
            if row is None:
                raise NotFound(f"no component {component!r}")
            row = await tx.query_one(
                "INSERT INTO sourcepackagerelease (name, version, component, section, urgency,"
                " upload_distroseries, creator) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    name,
                    version,
                    row[0],
                    section,
                    int(urgency),
                    id_of(upload_distroseries),
                    id_of(creator) if creator is not None else None,
                ),
            )
            assert row is not None
            for alias, filetype in files:
                await add_file(tx, row[0], id_of(alias), filetype)
            return int(row[0])

        return await self.get(await self._db.transaction(create))

    async def get(self, spr: HasId | int) -> SourcePackageRelease:
        rows = await self._db.query(
            f"SELECT {SPR_COLUMNS} FROM {SPR_FROM} WHERE spr.id = %s", (id_of(spr),)
        )
        if not rows:
            raise NotFound(f"no source package release {id_of(spr)}")
        return spr_from_row(rows[0])

    async def files(self, spr: HasId | int) -> list[SourcePackageReleaseFile]:
        """The release's files, ``.dsc`` first."""
        rows = await self._db.query(
            f"SELECT sprf.id, sprf.sourcepackagerelease, sprf.filetype, {LIBRARYFILE_COLUMNS}"
            f" FROM sourcepackagereleasefile sprf JOIN {LIBRARYFILE_JOIN} ON lfa.id = sprf.libraryfile"
            " WHERE sprf.sourcepackagerelease = %s ORDER BY sprf.filetype, lfa.filename",
            (id_of(spr),),
        )
        return [
            SourcePackageReleaseFile(
                r[0], r[1], SourcePackageFileType(r[2]), library_file_from_row(r[3:])
            )
            for r in rows
        ]

    async def add_file(
        self, spr: HasId | int, alias: HasId | int, filetype: SourcePackageFileType
    ) -> None:
        await self._db.transaction(add_file, id_of(spr), id_of(alias), filetype)

    async def replace_file(self, spr: HasId | int, old: HasId | int, new: HasId | int) -> None:
        """Point the release's file ``old`` at the librarian file ``new`` instead.

        :raises NotFound: when ``old`` is not a file of the release.
        """
        rows = await self._db.query(
            "UPDATE sourcepackagereleasefile SET libraryfile = %s"
            " WHERE sourcepackagerelease = %s AND libraryfile = %s RETURNING id",
            (id_of(new), id_of(spr), id_of(old)),
        )
        if not rows:
            raise NotFound(
                f"librarian file {id_of(old)} is not a file of source package release {id_of(spr)}"
            )
