"""The librarian's rows: reading file metadata and recording a stored file.

Content rows and content files are changed only under a transaction-scoped advisory lock on
the content's SHA-256 (:func:`lock_content`): an upload takes it before it moves its file into
place and keeps it until its alias row is committed; the garbage collector takes it before it
checks that a content is unreferenced and deletes its row and file. So the collector never
deletes a file that an upload has just put in place, in this process or any other.
"""

from __future__ import annotations

import datetime

import attrs

from buildmaster.librarian.errors import ContentMismatch, FileNotFound
from buildmaster.model import LibraryFile
from buildmaster.store.database import Database, Transaction
from buildmaster.store.files import LIBRARYFILE_COLUMNS, LIBRARYFILE_JOIN, library_file_from_row

__all__ = ["LOCK_NAMESPACE", "Hashes", "lock_key", "lock_content", "get_file", "record_file"]

#: The first key of the librarian's advisory locks, ``pg_advisory_xact_lock(LOCK_NAMESPACE,
#: key)`` ("LIBR"); other users of two-key advisory locks must pick another.
LOCK_NAMESPACE = 0x4C494252


@attrs.frozen
class Hashes:
    """What identifies a content: its size and digests (lowercase hex)."""

    size: int
    sha1: str
    sha256: str
    md5: str


def lock_key(sha256: str) -> int:
    """The second advisory-lock key for a content (its first 32 bits, signed)."""
    return int.from_bytes(bytes.fromhex(sha256[:8]), "big", signed=True)


async def lock_content(tx: Transaction, sha256: str) -> None:
    """Hold the content's lock until ``tx`` ends (waits while someone else holds it)."""
    await tx.query("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, lock_key(sha256)))


async def get_file(db: Database, alias_id: int) -> LibraryFile:
    """The alias ``alias_id`` with its content's hashes.

    :raises FileNotFound: when there is no such alias.
    :raises DatabaseError: when the database fails.
    """
    rows = await db.query(
        f"SELECT {LIBRARYFILE_COLUMNS} FROM {LIBRARYFILE_JOIN} WHERE lfa.id = %s",
        (alias_id,),
        prepared=True,
    )
    if not rows:
        raise FileNotFound(f"no librarian file {alias_id}")
    return library_file_from_row(rows[0])


_RECORD_SQL = """
WITH locked AS (SELECT pg_advisory_xact_lock(%(namespace)s, %(key)s)),
content AS (
    INSERT INTO libraryfilecontent (filesize, sha1, sha256, md5)
    SELECT %(size)s, %(sha1)s, %(sha256)s, %(md5)s FROM locked
    ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256
    RETURNING id, filesize, sha1, md5),
alias AS (
    INSERT INTO libraryfilealias (content, filename, mimetype, restricted, expires)
    SELECT id, %(filename)s, %(mimetype)s, %(restricted)s, %(expires)s FROM content
    WHERE filesize = %(size)s AND sha1 = %(sha1)s AND md5 = %(md5)s
    RETURNING id)
SELECT content.id, content.filesize, content.sha1, content.md5, (SELECT id FROM alias)
FROM content
"""


async def record_file(
    db: Database,
    hashes: Hashes,
    filename: str,
    mimetype: str,
    restricted: bool,
    expires: datetime.datetime | None,
) -> int:
    """Record a new alias for content ``hashes`` whose bytes are in place already, reusing the
    content row if there is one: one statement, under the content's lock.

    The caller moved the file into place first: a crash in between leaves an unreferenced
    file, never a row without its bytes; the garbage collector leaves a file that fresh alone
    (see :meth:`~buildmaster.librarian.storage.ContentStore.remove_unless_fresh`), so it never
    takes the bytes of an upload that is about to be recorded.

    :returns: the new alias id.
    :raises ContentMismatch: when a content row with this SHA-256 records other hashes.
    """
    rows = await db.query(
        _RECORD_SQL,
        {
            "namespace": LOCK_NAMESPACE,
            "key": lock_key(hashes.sha256),
            "size": hashes.size,
            "sha1": hashes.sha1,
            "sha256": hashes.sha256,
            "md5": hashes.md5,
            "filename": filename,
            "mimetype": mimetype,
            "restricted": restricted,
            "expires": expires,
        },
        prepared=True,
    )
    content_id, size, sha1, md5, alias = rows[0]
    if alias is None:
        raise ContentMismatch(
            f"content {content_id} records sha256 {hashes.sha256} with size {size}, sha1 {sha1},"
            f" md5 {md5}; the new bytes have size {hashes.size}, sha1 {hashes.sha1},"
            f" md5 {hashes.md5}"
        )
    return int(alias)
