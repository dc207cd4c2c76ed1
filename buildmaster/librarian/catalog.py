"""The librarian's rows: reading file metadata and recording stored files.

Content rows and content files are changed only under a transaction-scoped advisory lock on
the content's SHA-256 (:func:`lock_content`). An upload moves its bytes into place first and
then records its rows in one statement that takes the lock; the garbage collector takes the
lock before it checks that a content is unreferenced and deletes its row and file, and it
leaves files younger than its grace period alone, so it never takes the bytes of an upload
that is about to be recorded, in this process or any other. Uploads that finish together are
recorded together (:class:`RecordBatcher`): one statement locks their contents in key order,
as the collector does.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence

import attrs
from twisted.internet import defer

from buildmaster.librarian.errors import ContentMismatch, FileNotFound
from buildmaster.model import LibraryFile
from buildmaster.store.batching import StatementBatcher
from buildmaster.store.database import Database, Transaction
from buildmaster.store.files import LIBRARYFILE_COLUMNS, LIBRARYFILE_JOIN, library_file_from_row

__all__ = [
    "LOCK_NAMESPACE",
    "Hashes",
    "lock_key",
    "lock_content",
    "get_file",
    "record_file",
    "record_files",
    "RecordBatcher",
]

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
    [result] = await record_files(db, [NewFile(hashes, filename, mimetype, restricted, expires)])
    if isinstance(result, ContentMismatch):
        raise result
    return result


def _mismatch(hashes: Hashes, content_id: int, size: int, sha1: str, md5: str) -> ContentMismatch:
    return ContentMismatch(
        f"content {content_id} records sha256 {hashes.sha256} with size {size}, sha1 {sha1},"
        f" md5 {md5}; the new bytes have size {hashes.size}, sha1 {hashes.sha1},"
        f" md5 {hashes.md5}"
    )


@attrs.frozen
class NewFile:
    """An alias to record for content whose bytes are in place (see :func:`record_file`)."""

    hashes: Hashes
    filename: str
    mimetype: str
    restricted: bool
    expires: datetime.datetime | None


# Many files in one statement: the contents' locks are taken in key order (as the garbage
# collector takes them: no deadlock), each content row is upserted once, and every alias gets
# its id from the sequence up front so that the answer maps back to the input rows.
_RECORD_MANY_SQL = """
WITH input AS MATERIALIZED (
    SELECT i.*, nextval('libraryfilealias_id_seq') AS alias_id
    FROM unnest(%(sizes)s::bigint[], %(sha1s)s::text[], %(sha256s)s::text[], %(md5s)s::text[],
                %(filenames)s::text[], %(mimetypes)s::text[], %(restricted)s::boolean[],
                %(expires)s::timestamptz[])
         WITH ORDINALITY AS i(size, sha1, sha256, md5, filename, mimetype, restricted, expires, ord)),
locked AS MATERIALIZED (
    SELECT count(*) AS n FROM (
        SELECT pg_advisory_xact_lock(%(namespace)s, k.key) FROM (
            SELECT DISTINCT key FROM unnest(%(keys)s::integer[]) AS key ORDER BY key) k) l),
content AS (
    INSERT INTO libraryfilecontent (filesize, sha1, sha256, md5)
    SELECT DISTINCT ON (i.sha256) i.size, i.sha1, i.sha256, i.md5
    FROM input i, locked WHERE locked.n >= 0
    ORDER BY i.sha256, i.ord
    ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256
    RETURNING id, filesize, sha1, sha256, md5),
alias AS (
    INSERT INTO libraryfilealias (id, content, filename, mimetype, restricted, expires)
    SELECT i.alias_id, c.id, i.filename, i.mimetype, i.restricted, i.expires
    FROM input i JOIN content c ON c.sha256 = i.sha256
    WHERE c.filesize = i.size AND c.sha1 = i.sha1 AND c.md5 = i.md5
    RETURNING id)
SELECT i.ord, c.id, c.filesize, c.sha1, c.md5, (SELECT a.id FROM alias a WHERE a.id = i.alias_id)
FROM input i JOIN content c ON c.sha256 = i.sha256
ORDER BY i.ord
"""


async def record_files(db: Database, files: Sequence[NewFile]) -> list[int | ContentMismatch]:
    """:func:`record_file` for many files in one statement: for each, in order, its new
    alias id, or the :class:`ContentMismatch` that refused it. A statement error (a filename
    the schema refuses, say) refuses them all: the caller decides what to do then.
    """
    rows = await db.query(
        _RECORD_MANY_SQL,
        {
            "namespace": LOCK_NAMESPACE,
            "keys": [lock_key(f.hashes.sha256) for f in files],
            "sizes": [f.hashes.size for f in files],
            "sha1s": [f.hashes.sha1 for f in files],
            "sha256s": [f.hashes.sha256 for f in files],
            "md5s": [f.hashes.md5 for f in files],
            "filenames": [f.filename for f in files],
            "mimetypes": [f.mimetype for f in files],
            "restricted": [f.restricted for f in files],
            "expires": [f.expires for f in files],
        },
        prepared=True,
    )
    if len(rows) != len(files):  # pragma: no cover - every input row joins its content
        raise RuntimeError(f"recorded {len(rows)} of {len(files)} files")
    return [
        int(alias) if alias is not None else _mismatch(f.hashes, content_id, size, sha1, md5)
        for f, (_, content_id, size, sha1, md5, alias) in zip(files, rows, strict=True)
    ]


class RecordBatcher:
    """Records new aliases, several in one statement when they come together
    (:class:`~buildmaster.store.batching.StatementBatcher`): a lone file is recorded at once,
    as :func:`record_file` would; under load, many uploads share one statement and one
    commit; when a shared statement fails, a file the database refuses fails alone.
    """

    def __init__(self, db: Database, concurrency: int = 2, max_batch: int = 64) -> None:
        self._batcher: StatementBatcher[NewFile, int] = StatementBatcher(
            functools.partial(record_files, db), concurrency, max_batch
        )

    @property
    def statements(self) -> int:
        """Statements run so far (for tests and benchmarks)."""
        return self._batcher.statements

    def record(
        self,
        hashes: Hashes,
        filename: str,
        mimetype: str,
        restricted: bool,
        expires: datetime.datetime | None,
    ) -> defer.Deferred[int]:
        """Record one alias; fires with its id (see :func:`record_file`)."""
        return self._batcher.submit(NewFile(hashes, filename, mimetype, restricted, expires))
