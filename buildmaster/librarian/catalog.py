"""The librarian's rows: reading file metadata and recording a stored file.

Content rows and content files are changed only under a transaction-scoped advisory lock on
the content's SHA-256 (:func:`lock_content`): an upload takes it before it moves its file into
place and keeps it until its alias row is committed; the garbage collector takes it before it
checks that a content is unreferenced and deletes its row and file. So the collector never
deletes a file that an upload has just put in place, in this process or any other.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable

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
        f"SELECT {LIBRARYFILE_COLUMNS} FROM {LIBRARYFILE_JOIN} WHERE lfa.id = %s", (alias_id,)
    )
    if not rows:
        raise FileNotFound(f"no librarian file {alias_id}")
    return library_file_from_row(rows[0])


async def record_file(
    tx: Transaction,
    hashes: Hashes,
    filename: str,
    mimetype: str,
    restricted: bool,
    expires: datetime.datetime | None,
    publish: Callable[[], Awaitable[None]],
) -> int:
    """Record a new alias for content ``hashes``, reusing its content row if there is one.

    ``publish`` moves the bytes into place; it is called with the content lock held, before
    the alias row exists (so a crash leaves at most an unreferenced file, never a row
    without its bytes). It may be called again if the transaction is retried.

    :returns: the new alias id.
    :raises ContentMismatch: when a content row with this SHA-256 records other hashes.
    """
    # one round trip: take the content's lock, then find or create its row (the insert's
    # conflict check sees rows committed while we waited for the lock, e.g. a deletion)
    row = await tx.query_one(
        "WITH locked AS (SELECT pg_advisory_xact_lock(%s, %s))"
        " INSERT INTO libraryfilecontent (filesize, sha1, sha256, md5)"
        " SELECT %s, %s, %s, %s FROM locked"
        " ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256"
        " RETURNING id, filesize, sha1, md5",
        (
            LOCK_NAMESPACE,
            lock_key(hashes.sha256),
            hashes.size,
            hashes.sha1,
            hashes.sha256,
            hashes.md5,
        ),
    )
    assert row is not None
    content_id, size, sha1, md5 = row
    if (size, sha1, md5) != (hashes.size, hashes.sha1, hashes.md5):
        raise ContentMismatch(
            f"content {content_id} records sha256 {hashes.sha256} with size {size}, sha1 {sha1},"
            f" md5 {md5}; the new bytes have size {hashes.size}, sha1 {hashes.sha1},"
            f" md5 {hashes.md5}"
        )
    await publish()
    alias = await tx.query_one(
        "INSERT INTO libraryfilealias (content, filename, mimetype, restricted, expires)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (content_id, filename, mimetype, restricted, expires),
    )
    assert alias is not None
    return int(alias[0])
