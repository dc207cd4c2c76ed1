"""Reading librarian file metadata (aliases joined with their content)."""

from __future__ import annotations

import datetime
from typing import Any

from buildmaster.model import LibraryFile
from buildmaster.store.database import Database, NotFound

__all__ = ["LIBRARYFILE_COLUMNS", "LIBRARYFILE_JOIN", "library_file_from_row", "FileQueries"]

#: The columns :func:`library_file_from_row` reads, from ``libraryfilealias lfa``
#: joined to ``libraryfilecontent lfc``.
LIBRARYFILE_COLUMNS = (
    "lfa.id, lfa.content, lfa.filename, lfa.mimetype, lfa.restricted, lfa.expires,"
    " lfc.filesize, lfc.sha1, lfc.sha256, lfc.md5, lfa.datecreated"
)
LIBRARYFILE_JOIN = "libraryfilealias lfa JOIN libraryfilecontent lfc ON lfc.id = lfa.content"
LIBRARYFILE_WIDTH = 11


def library_file_from_row(row: tuple[Any, ...]) -> LibraryFile:
    return LibraryFile(
        id=row[0],
        content_id=row[1],
        filename=row[2],
        mimetype=row[3],
        restricted=row[4],
        expires=row[5],
        filesize=row[6],
        sha1=row[7],
        sha256=row[8],
        md5=row[9],
        datecreated=row[10],
    )


class FileQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, alias_id: int) -> LibraryFile:
        """The alias ``alias_id`` with its content's hashes.

        :raises NotFound: when there is no such alias.
        """
        rows = await self._db.query(
            f"SELECT {LIBRARYFILE_COLUMNS} FROM {LIBRARYFILE_JOIN} WHERE lfa.id = %s", (alias_id,)
        )
        if not rows:
            raise NotFound(f"no librarian file {alias_id}")
        return library_file_from_row(rows[0])

    async def expire(self, alias_id: int, when: datetime.datetime) -> None:
        """Let the alias expire at ``when`` (or earlier, if it expires before): the garbage
        collector removes it afterwards, unless something still refers to it."""
        await self._db.execute(
            "UPDATE libraryfilealias SET expires = least(coalesce(expires, %s), %s) WHERE id = %s",
            (when, when, alias_id),
        )
