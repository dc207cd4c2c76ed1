"""Recording the aliases of finished uploads: several in one statement when they come
together, and a file the database refuses fails alone."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest_twisted
from test_librarian_support import make_librarian
from twisted.internet import defer

from buildmaster.librarian import ContentMismatch
from buildmaster.librarian.catalog import Hashes, RecordBatcher
from buildmaster.store import ConstraintViolation
from buildmaster.store.database import Database
from buildmaster.testing import wait_for


def hashes_of(data: bytes) -> Hashes:
    return Hashes(
        len(data),
        hashlib.sha1(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
        hashlib.md5(data).hexdigest(),
    )


@pytest_twisted.ensureDeferred
async def test_uploads_finishing_together_share_statements_and_each_gets_its_own_alias(
    reactor: Any, db: Database, dsn: str, tmp_path: Path
) -> None:
    """Uploads that end while the statements recording others are in flight are recorded
    together. To have them end together whatever the machine's speed, another session holds
    the table the records go to: the first two statements wait for it, the other uploads
    end meanwhile."""
    librarian = make_librarian(reactor, db, tmp_path / "librarian")
    submitted: list[str] = []
    record = librarian.records.record

    def counted(hashes: Hashes, filename: str, *rest: Any) -> defer.Deferred[int]:
        submitted.append(filename)
        return record(hashes, filename, *rest)

    librarian.records.record = counted  # type: ignore[method-assign,assignment]
    other = Database(reactor, dsn, size=2)
    await other.connect()
    release: defer.Deferred[None] = defer.Deferred()
    locked: defer.Deferred[None] = defer.Deferred()

    async def hold(tx: Any) -> None:
        await tx.execute("LOCK TABLE libraryfilealias IN EXCLUSIVE MODE")
        locked.callback(None)
        await release

    async def waiting() -> bool:
        rows = await other.query("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return bool(rows[0][0] == 2)

    blobs = [os.urandom(1000 + i) for i in range(24)]
    blobs.append(blobs[0])  # the same bytes again, under another name: one content row
    names = [f"file-{i}.bin" for i in range(len(blobs))]
    try:
        holding = other.transaction(hold)
        await locked
        adding = defer.gatherResults(
            [
                librarian.addFile(name, len(data), io.BytesIO(data), "application/x-test")
                for name, data in zip(names, blobs, strict=True)
            ]
        )
        await wait_for(reactor, lambda: len(submitted) == len(blobs), 60, "every upload done")
        await wait_for(reactor, waiting, 60, "two statements waiting for the table")
        release.callback(None)
        await holding
        ids = await adding
    finally:
        if not release.called:
            release.callback(None)
        await other.close()
    assert len(set(ids)) == len(blobs)
    for alias_id, name, data in zip(ids, names, blobs, strict=True):
        file = await librarian.get(alias_id)
        assert (file.filename, file.mimetype, file.sha256) == (
            name,
            "application/x-test",
            hashlib.sha256(data).hexdigest(),
        )
        assert await librarian.read_bytes(alias_id) == data
    [(contents,)] = await db.query("SELECT count(*) FROM libraryfilecontent")
    assert contents == 24
    assert (await librarian.get(ids[0])).content_id == (await librarian.get(ids[-1])).content_id
    # two statements alone (the first uploads), then one for the 23 that ended meanwhile
    assert librarian.records.statements == 3


@pytest_twisted.ensureDeferred
async def test_a_file_the_database_refuses_fails_alone(db: Database) -> None:
    batcher = RecordBatcher(db, concurrency=1)
    existing = os.urandom(500)
    first = await batcher.record(hashes_of(existing), "existing", "text/plain", False, None)
    good = [os.urandom(300 + i) for i in range(4)]
    # the same SHA-256 as a stored content but other hashes: refused as a mismatch
    liar = Hashes(999, "0" * 40, hashes_of(existing).sha256, "0" * 32)

    async def together(*files: tuple[Hashes, str]) -> list[Any]:
        ds = [batcher.record(h, name, "text/plain", False, None) for h, name in files]
        results: list[tuple[bool, Any]] = await defer.DeferredList(ds, consumeErrors=True)
        return [value if ok else value.value for ok, value in results]

    statements = batcher.statements
    results = await together(
        (hashes_of(good[0]), "a"),  # alone: nothing is in flight
        (hashes_of(good[1]), "b"),
        (liar, "liar"),
        (hashes_of(good[2]), "c"),
    )
    assert batcher.statements == statements + 2  # "a" alone, then the three together
    assert isinstance(results[2], ContentMismatch)
    assert "records sha256" in str(results[2])
    for result in results[:2] + results[3:]:
        assert isinstance(result, int)

    # a name the schema refuses makes the shared statement fail: the files are then recorded
    # one by one, and only that one fails
    statements = batcher.statements
    results = await together(
        (hashes_of(good[3]), "d"),
        (hashes_of(good[3]), "bad/name"),
        (hashes_of(good[0]), "e"),
    )
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert isinstance(results[1], ConstraintViolation)
    assert batcher.statements == statements + 1 + 1 + 2  # "d"; shared (failed); retried alone
    names = {r[0] for r in await db.query("SELECT filename FROM libraryfilealias")}
    assert names == {"existing", "a", "b", "c", "d", "e"}
    assert first not in results


@pytest_twisted.ensureDeferred
async def test_a_lone_file_is_recorded_at_once(db: Database) -> None:
    batcher = RecordBatcher(db)
    data = os.urandom(100)
    alias = await batcher.record(hashes_of(data), "lone", "text/plain", True, None)
    rows = await db.query(
        "SELECT a.filename, a.restricted, c.sha1 FROM libraryfilealias a"
        " JOIN libraryfilecontent c ON c.id = a.content WHERE a.id = %s",
        (alias,),
    )
    assert rows == [("lone", True, hashlib.sha1(data).hexdigest())]
    assert batcher.statements == 1
