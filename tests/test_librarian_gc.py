"""Librarian garbage collection: what goes, what stays, and races with uploads."""

from __future__ import annotations

import datetime
import io
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_librarian_support import (
    make_librarian,
    row_counts,
    stored_files,
)
from twisted.internet import defer, task, utils

from buildmaster.librarian import Librarian
from buildmaster.librarian.catalog import Hashes, record_file
from buildmaster.librarian.collector import GarbageCollectorService, GarbageStats
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store
from buildmaster.store.database import Database, Transaction
from buildmaster.testing import wait_for

PAST = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
FUTURE = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def librarian(reactor: Any, db: Database, tmp_path: Path) -> Librarian:
    """A librarian on the test's database, storing under ``tmp_path/librarian``, whose
    collector takes files at once (these tests make them a moment before they collect)."""
    lib = make_librarian(reactor, db, tmp_path / "librarian")
    lib.collector.fresh_grace = 0
    return lib


async def add(lib: Librarian, data: bytes, name: str = "f.bin", **kw: Any) -> int:
    return await lib.addFile(name, len(data), io.BytesIO(data), "application/octet-stream", **kw)


async def content_path(lib: Librarian, alias_id: int) -> Path:
    return lib.store.path_for((await lib.get(alias_id)).sha256)


async def alias_ids(db: Database) -> set[int]:
    return {r[0] for r in await db.query("SELECT id FROM libraryfilealias")}


async def waiting_for_advisory_lock(reactor: Any, db: Database) -> None:
    """Returns once some session waits for an advisory lock."""

    async def waiting() -> bool:
        rows = await db.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        return bool(rows[0][0])

    await wait_for(reactor, waiting, 60, "a session waiting for the lock")


@pytest_twisted.ensureDeferred
async def test_expired_files_go_and_the_rest_stay(librarian: Librarian, db: Database) -> None:
    expired = await add(librarian, b"old log", expires=PAST)
    shared_expired = await add(librarian, b"shared", expires=PAST)
    shared_live = await add(librarian, b"shared")
    later = await add(librarian, b"not yet", expires=FUTURE)
    forever = await add(librarian, b"forever")
    expired_path = await content_path(librarian, expired)
    shared_path = await content_path(librarian, shared_live)

    stats = await librarian.collect_garbage()

    assert stats == GarbageStats(expired_aliases=2, contents=1, content_bytes=7)
    assert await alias_ids(db) == {shared_live, later, forever}
    assert expired not in await alias_ids(db) and shared_expired not in await alias_ids(db)
    assert not expired_path.exists()
    assert shared_path.exists()
    for alias_id, data in [(shared_live, b"shared"), (later, b"not yet"), (forever, b"forever")]:
        assert await librarian.read_bytes(alias_id) == data
    assert await librarian.collect_garbage() == GarbageStats()  # nothing left to do


@pytest_twisted.ensureDeferred
async def test_expired_files_still_referenced_are_kept(librarian: Librarian, db: Database) -> None:
    sample = await load_sample_data(Store(db))
    chroot = await add(librarian, b"chroot", expires=PAST)
    source = await add(librarian, b"source", expires=PAST)
    log = await add(librarian, b"log", expires=PAST)
    result = await add(librarian, b"deb", expires=PAST)
    loose = await add(librarian, b"loose", expires=PAST)
    await Store(db).distributions.addOrUpdateChroot(sample.hoary_i386, chroot)
    await db.query(
        "INSERT INTO sourcepackagereleasefile (sourcepackagerelease, libraryfile, filetype)"
        " SELECT min(id), %s, 1 FROM sourcepackagerelease RETURNING id",
        (source,),
    )
    await db.execute("UPDATE build SET log = %s WHERE id = (SELECT min(id) FROM build)", (log,))
    await db.query(
        "INSERT INTO buildfile (build, libraryfile, filename)"
        " SELECT min(id), %s, 'x.deb' FROM build RETURNING id",
        (result,),
    )
    before = await alias_ids(db)

    stats = await librarian.collect_garbage()

    assert stats.expired_aliases == 1
    assert await alias_ids(db) == before - {loose}
    for alias_id, data in [
        (chroot, b"chroot"),
        (source, b"source"),
        (log, b"log"),
        (result, b"deb"),
    ]:
        assert await librarian.read_bytes(alias_id) == data


@pytest_twisted.ensureDeferred
async def test_orphan_files_and_stale_temporary_files_go(librarian: Librarian) -> None:
    kept = await add(librarian, b"kept")
    kept_path = await content_path(librarian, kept)
    orphan = librarian.store.path_for("ab" * 32)  # bytes left by a crash before the commit
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    stray = librarian.root / "ab" / "README"  # not ours: left alone
    stray.write_text("hello")
    librarian.store.incoming.mkdir(parents=True, exist_ok=True)
    stale = librarian.store.incoming / "dead.part"
    stale.write_bytes(b"half an upload")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    recent = librarian.store.incoming / "recent.part"
    recent.write_bytes(b"half another")

    stats = await librarian.collect_garbage(temp_grace=600)

    assert (stats.orphan_files, stats.temp_files) == (1, 1)
    assert not orphan.exists()
    assert not stale.exists()
    assert recent.exists()
    assert stray.exists()
    assert kept_path.exists()
    assert await librarian.read_bytes(kept) == b"kept"


@pytest_twisted.ensureDeferred
async def test_an_upload_in_flight_keeps_its_temporary_file(librarian: Librarian) -> None:
    upload = librarian.new_upload("in-flight", "application/octet-stream")
    chunk = os.urandom(1024 * 1024)
    for _ in range(12):
        await upload.write(chunk)
    stats = await librarian.collect_garbage(temp_grace=0)
    assert stats.temp_files == 0
    for _ in range(4):
        await upload.write(chunk)
    alias_id = await upload.finish()
    assert await librarian.read_bytes(alias_id, limit=20 * 1024 * 1024) == chunk * 16


@pytest_twisted.ensureDeferred
async def test_a_content_whose_bytes_were_just_put_back_is_kept(
    librarian: Librarian, db: Database
) -> None:
    """An upload of bytes whose only alias has expired moves its file into place before it
    records it: a collection in between sees a fresh file and keeps it, and its row."""
    librarian.collector.fresh_grace = 600
    data = os.urandom(200_000)
    old = await add(librarian, data, "old", expires=PAST)
    file = await librarian.get(old)
    path = librarian.store.path_for(file.sha256)
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    path.touch()  # the upload has just put the same bytes in place (a new mtime)

    stats = await librarian.collect_garbage()
    assert stats.expired_aliases == 1 and stats.contents == 0
    assert path.exists()
    hashes = Hashes(file.filesize, file.sha1, file.sha256, file.md5)
    new = await record_file(db, hashes, "new", "text/plain", False, None)  # the upload records
    assert (await librarian.get(new)).content_id == file.content_id
    assert await librarian.read_bytes(new) == data


@pytest_twisted.ensureDeferred
async def test_an_old_unreferenced_content_goes(librarian: Librarian, db: Database) -> None:
    librarian.collector.fresh_grace = 600
    data = os.urandom(1000)
    old = await add(librarian, data, "old", expires=PAST)
    path = await content_path(librarian, old)
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    stats = await librarian.collect_garbage()
    assert (stats.expired_aliases, stats.contents) == (1, 1)
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if ".gc-" in p.name]  # nothing left aside


@pytest_twisted.ensureDeferred
async def test_an_upload_waits_for_a_collection_in_progress(
    reactor: Any, librarian: Librarian, db: Database
) -> None:
    """The collector deletes a content and unlinks its file under the content's lock; an upload
    of the same bytes meanwhile puts its own file in place, waits for the lock to record it,
    then creates the content again."""
    librarian.collector.fresh_grace = 0  # the content was made a moment ago, by this test
    data = os.urandom(200_000)
    old = await add(librarian, data, "old")
    file = await librarian.get(old)
    path = librarian.store.path_for(file.sha256)
    await db.execute("DELETE FROM libraryfilealias WHERE id = %s", (old,))
    deleted: defer.Deferred[None] = defer.Deferred()
    go: defer.Deferred[None] = defer.Deferred()

    async def collect(tx: Transaction) -> list[tuple[str, int]]:
        gone = await librarian.collector.delete_unreferenced_contents(
            tx, [file.content_id], [file.sha256]
        )
        deleted.callback(None)
        await go  # the collector is slow to commit
        return gone

    collecting = db.transaction(collect)
    try:
        await deleted
        assert not path.exists()
        uploading = defer.ensureDeferred(add(librarian, data, "again"))
        await waiting_for_advisory_lock(reactor, db)
        assert not uploading.called
    finally:
        go.callback(None)  # (also when the test failed: do not leave the transaction open)
    assert await collecting == [(file.sha256, len(data))]
    new = await uploading

    assert path.exists()
    assert (await librarian.get(new)).content_id != file.content_id
    assert await librarian.read_bytes(new) == data


@pytest_twisted.ensureDeferred
async def test_collections_racing_uploads_lose_nothing(librarian: Librarian, db: Database) -> None:
    """Uploads of a few contents (half of them expiring at once) run alongside collections:
    every alias that is not expired stays readable."""
    librarian.collector.fresh_grace = 600  # as in production: uploads race the collector
    contents = [os.urandom(300_000) for _ in range(3)]
    uploads = []
    for round_ in range(4):
        for i, data in enumerate(contents):
            expires = PAST if (round_ + i) % 2 else None
            uploads.append((defer.ensureDeferred(add(librarian, data, expires=expires)), data))
        collections = [librarian.collect_garbage(temp_grace=0) for _ in range(2)]
        await defer.gatherResults(collections)
    ids = [(await d, data, d) for d, data in uploads]
    await librarian.collect_garbage(temp_grace=0)
    live = await alias_ids(db)
    for alias_id, data, _ in ids:
        file = await librarian.get(alias_id) if alias_id in live else None
        if file is not None and file.expires is None:
            assert await librarian.read_bytes(alias_id) == data
        else:
            assert alias_id not in live
    contents_left, aliases_left = await row_counts(db)
    assert (
        aliases_left == len(live) == sum(1 for r in range(4) for i in range(3) if (r + i) % 2 == 0)
    )
    assert len([p for p in stored_files(librarian.root) if p.parent.name != "incoming"]) == (
        contents_left
    )


# -- the periodic service and the command ---------------------------------------------------


def test_the_librarian_makes_its_collector_service(librarian: Librarian) -> None:
    service = librarian.garbage_collector(interval=123.0, temp_grace=5.0)
    assert (service.interval, service.temp_grace, service.running) == (123.0, 5.0, 0)


@pytest_twisted.ensureDeferred
async def test_the_service_collects_on_its_clock(librarian: Librarian, db: Database) -> None:
    clock = task.Clock()
    expired = await add(librarian, b"old", expires=PAST)
    service = GarbageCollectorService(librarian.collector, clock, interval=3600)
    service.startService()
    clock.advance(3599)
    assert service.passes == 0
    clock.advance(1)
    await service.stopService()  # waits for the pass in progress
    assert service.passes == 1
    assert expired not in await alias_ids(db)
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_failing_pass_is_logged_and_the_next_one_runs(
    reactor: Any, db: Database, tmp_path: Path, captured_log: Any
) -> None:
    captured_log.allow_errors(NotADirectoryError)
    root = tmp_path / "not-a-directory"
    root.write_text("")
    lib = Librarian(reactor, db, root, "http://x/", b"s" * 32)
    clock = task.Clock()
    service = GarbageCollectorService(lib.collector, clock, interval=60)
    service.startService()

    def passes(n: int) -> bool:
        return bool(service.passes == n)

    for expected in (1, 2):
        clock.advance(60)
        await wait_for(reactor, partial(passes, expected), 60, f"garbage collection {expected}")
    await service.stopService()
    assert service.passes == 2
    failures = [m for m in captured_log.messages() if "garbage collection failed" in m]
    assert len(failures) == 2
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_the_gc_command(librarian: Librarian, db: Database, dsn: str) -> None:
    expired = await add(librarian, b"old", expires=PAST)
    path = await content_path(librarian, expired)
    kept = await add(librarian, b"kept")
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable,
        [
            "-m",
            "buildmaster.librarian.gc",
            "--dsn",
            dsn,
            "--root",
            str(librarian.root),
            "--fresh-grace",
            "0",
        ],  # fmt: skip
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert code == 0, err
    assert b"removed 1 expired aliases, 1 contents (3 bytes)" in out
    assert not path.exists()
    assert await alias_ids(db) == {kept}


@pytest.mark.parametrize("what", [["upload"], ["file", "42"]])
@pytest_twisted.ensureDeferred
async def test_the_token_command(db: Database, dsn: str, tmp_path: Path, what: list[str]) -> None:
    """Its tokens are made with the farm's secret (the database's), which every master
    checks them with; a state directory's old secret is adopted when the farm has none."""
    from buildmaster.librarian.farm import farm_identity
    from buildmaster.librarian.tokens import (
        UPLOAD_SUBJECT,
        check_token,
        file_subject,
        load_or_create_secret,
    )

    old = load_or_create_secret(tmp_path)  # from before the secret moved into the database
    code, out, err = await _run_command(
        "buildmaster.librarian.tokens", "--dsn", dsn, "--state-dir", str(tmp_path), *what
    )
    assert code == 0, err
    subject = UPLOAD_SUBJECT if what == ["upload"] else file_subject(42)
    farm = await farm_identity(db)
    assert farm.secret == old
    assert check_token(farm.secret, out.strip(), subject, time.time())
    assert not check_token(farm.secret, out.strip(), file_subject(43), time.time())
    code, out, err = await _run_command(
        "buildmaster.librarian.tokens", *what, env={"BUILDMASTER_DSN": dsn}
    )
    assert code == 0, err
    assert check_token(farm.secret, out.strip(), subject, time.time())


@pytest_twisted.ensureDeferred
async def test_the_token_command_needs_a_database(tmp_path: Path) -> None:
    code, _, err = await _run_command("buildmaster.librarian.tokens", "upload")
    assert code == 2 and "--dsn, $BUILDMASTER_DSN or --state-dir" in err
    code, _, err = await _run_command(
        "buildmaster.librarian.tokens", "--state-dir", str(tmp_path), "upload"
    )
    assert code == 2 and "start the master once first" in err


async def _run_command(
    module: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != "BUILDMASTER_DSN"}
    root = str(Path(__file__).resolve().parent.parent)
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable,
        ["-m", module, *args],
        env={**inherited, "PYTHONPATH": root, **(env or {})},
        path=root,
    )
    return code, out.decode(), err.decode()
