"""Several masters on one database serve every file: one files directory that they share
(``--files-dir``), marked with the farm's id, and the token secret in the database.

Real masters (:class:`BuildmasterService`, each with its own state directory and web
server on 127.0.0.1), a real PostgreSQL, and the simulated builder's file cache fetching
over real HTTP, as ``ensurepresent`` does.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.web.client import HTTPConnectionPool

from buildmaster.config import MasterConfig
from buildmaster.librarian import Librarian
from buildmaster.librarian.catalog import LOCK_NAMESPACE, lock_key
from buildmaster.librarian.collector import GarbageCollector
from buildmaster.librarian.farm import MARKER, claim_files_dir, farm_identity
from buildmaster.librarian.storage import ContentStore
from buildmaster.librarian.tokens import load_or_create_secret
from buildmaster.sampledata import load_sample_data
from buildmaster.service import BuildmasterService, ServiceSettings, StartupError
from buildmaster.store import Database, Store
from buildmaster.testing import wait_for
from slavesim.cache import AgentFetcher, FileCache, download_agent

PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


def _settings(state: Path, dsn: str, files: Path | None) -> ServiceSettings:
    return ServiceSettings(
        state_dir=state,
        dsn=dsn,
        port="tcp:0:interface=127.0.0.1",
        files_dir=files,
        master=MasterConfig(scan_interval=3600),
    )


async def _start(reactor: Any, settings: ServiceSettings) -> BuildmasterService:
    service = BuildmasterService(reactor, settings)
    service.startService()
    try:
        await service.when_ready()
    except BaseException:
        await service.stopService()
        raise
    return service


@contextlib.asynccontextmanager
async def _masters(
    reactor: Any, dsn: str, tmp_path: Path, files: Path | None
) -> AsyncIterator[tuple[BuildmasterService, BuildmasterService]]:
    """Masters A and B on one database, each with its own state directory, both with the
    files directory ``files``."""
    started: list[BuildmasterService] = []
    try:
        for name in ("a", "b"):
            started.append(await _start(reactor, _settings(tmp_path / name, dsn, files)))
        yield started[0], started[1]
    finally:
        for service in started:
            await service.stopService()


class Builder:
    """A simulated builder's file cache, fetching over real HTTP as ``ensurepresent``."""

    def __init__(self, reactor: Any, directory: Path) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        fetcher = AgentFetcher(download_agent(reactor, self.pool), reactor, timeout=30)
        self.cache = FileCache(directory, fetcher, max_size=10**8)

    async def ensurepresent(
        self, sha1: str, url: str, token: str | None
    ) -> tuple[list[object], bytes | None]:
        """The answer, and the bytes cached (``None`` when not)."""
        user = "buildd" if token else None
        answer = await self.cache.ensure_present(sha1, url, user, token)
        return answer, self.cache.path(sha1).read_bytes() if self.cache.has(sha1) else None

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


def _lib(service: BuildmasterService) -> Librarian:
    assert service.librarian is not None
    return service.librarian


async def _add(lib: Librarian, name: str, data: bytes, **kw: Any) -> int:
    return int(await lib.addFile(name, len(data), io.BytesIO(data), "text/plain", **kw))


@pytest_twisted.ensureDeferred
async def test_a_file_stored_by_one_master_is_served_by_another_to_its_token(
    reactor: Any, dsn: str, tmp_path: Path
) -> None:
    """Master A stores a private file and hands out a token for it; a builder sent to B's
    URL with A's token gets the bytes (and without a token, nothing)."""
    shared = tmp_path / "shared"
    builder = Builder(reactor, tmp_path / "cache")
    try:
        async with _masters(reactor, dsn, tmp_path, shared) as (a, b):
            data = b"Source: secret\n" * 100
            alias = await _add(_lib(a), "secret_1.0.dsc", data, restricted=True)
            token = _lib(a).token_for(alias)
            file = await _lib(b).get(alias)
            url = _lib(b).url_for(file)
            assert url.startswith(_lib(b).public_url) != url.startswith(_lib(a).public_url)
            sha1 = hashlib.sha1(data).hexdigest()
            assert await builder.ensurepresent(sha1, url, None) == (
                [False, "Error accessing Librarian: HTTP Error 401: Unauthorized"],
                None,
            )
            assert await builder.ensurepresent(sha1, url, token) == ([True, "Download"], data)
            # and an upload token of B's is taken by A
            assert _lib(a).check_upload_token(_lib(b).upload_token())
            # both masters use the farm's secret, not one of their own state directories
            farm = await farm_identity(_lib(a)._db)
            assert not (tmp_path / "a" / "librarian.secret").exists()
            assert (shared / MARKER).read_text() == f"{farm.id}\n"
    finally:
        await builder.close()


@pytest_twisted.ensureDeferred
async def test_the_collectors_of_both_masters_keep_referenced_files_and_uploads_in_flight(
    reactor: Any, dsn: str, tmp_path: Path
) -> None:
    """Both masters collect garbage in the shared directory while A has an upload being
    written and another one put in place but not yet recorded: both survive, and so does an
    expired file that a chroot refers to; A's expired unreferenced file is collected by B."""
    shared = tmp_path / "shared"
    builder = Builder(reactor, tmp_path / "cache")
    try:
        async with _masters(reactor, dsn, tmp_path, shared) as (a, b):
            store = Store(_lib(a)._db)
            data = await load_sample_data(store)
            chroot_bytes = b"an expired chroot, still referenced" * 10
            chroot = await _add(_lib(a), "chroot.tar.gz", chroot_bytes, expires=PAST)
            await store.distributions.addOrUpdateChroot(data.hoary_i386, chroot)
            garbage = await _add(_lib(a), "old.log", b"nobody wants this", expires=PAST)
            garbage_path = ContentStore(shared).path_for((await _lib(a).get(garbage)).sha256)
            hour_ago = reactor.seconds() - 3600
            os.utime(garbage_path, (hour_ago, hour_ago))  # stored long ago, expired since

            # an upload being written by A
            writing = _lib(a).new_upload("writing.log", "text/plain")
            await writing.write(b"first half;")
            # another one, put in place by A, its record held back (someone holds its lock)
            held_bytes = b"put in place, not yet recorded"
            sha256 = hashlib.sha256(held_bytes).hexdigest()
            locker = psycopg2.connect(dsn)
            locker.autocommit = True
            try:
                with locker.cursor() as cur:
                    cur.execute(
                        "SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, lock_key(sha256))
                    )
                held = _lib(a).new_upload("held.log", "text/plain")
                await held.write(held_bytes)
                finishing = held.finish()
                in_place = ContentStore(shared).path_for(sha256)
                await wait_for(reactor, in_place.exists, 30, "the upload to put its file")
                # both collectors at once: B's waits for the lock the upload waits for
                passes = [
                    _lib(b).collect_garbage(),
                    _lib(a).collect_garbage(),
                ]
                with locker.cursor() as cur:
                    cur.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, lock_key(sha256))
                    )
            finally:
                locker.close()
            held_alias = await finishing
            stats = await defer.gatherResults(passes)
            assert sum(s.expired_aliases for s in stats) == 1  # the unreferenced one
            assert not garbage_path.exists()
            await writing.write(b" second half")
            writing_alias = await writing.finish()
            # once more, now that nothing is in flight
            await _lib(b).collect_garbage()
            # expired, so no longer served, but kept: a chroot refers to it
            assert await _lib(b).read_bytes(chroot) == chroot_bytes
            for alias, expected in [
                (held_alias, held_bytes),
                (writing_alias, b"first half; second half"),
            ]:
                file = await _lib(a).get(alias)
                answer = await builder.ensurepresent(file.sha1, _lib(b).url_for(file), None)
                assert answer == ([True, "Download"], expected), alias
    finally:
        await builder.close()


@pytest_twisted.ensureDeferred
async def test_a_master_adopts_its_old_secret_and_the_next_one_uses_it(
    reactor: Any, dsn: str, tmp_path: Path
) -> None:
    """A farm upgraded from one master: its state directory's secret becomes the farm's (the
    tokens it handed out stay valid); a second master, with another old secret, uses the
    farm's."""
    old = load_or_create_secret(tmp_path / "a")
    other = load_or_create_secret(tmp_path / "b")
    shared = tmp_path / "shared"
    async with _masters(reactor, dsn, tmp_path, shared) as (a, b):
        alias = await _add(_lib(a), "x.log", b"x", restricted=True)
        from buildmaster.librarian.tokens import file_subject, make_token

        handed_out_before = make_token(old, file_subject(alias), reactor.seconds() + 3600)
        made_with_other = make_token(other, file_subject(alias), reactor.seconds() + 3600)
        for service in (a, b):
            assert _lib(service).check_token(alias, handed_out_before)
            assert not _lib(service).check_token(alias, made_with_other)


@pytest_twisted.ensureDeferred
async def test_masters_making_the_farm_at_once_get_one_secret(
    reactor: Any, dsn: str, db: Database
) -> None:
    pools = [Database(reactor, dsn, size=1) for _ in range(4)]
    for pool in pools:
        await pool.connect()
    try:
        farms = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(farm_identity(pool)) for pool in pools]
        )
    finally:
        for pool in pools:
            await pool.close()
    assert len({(f.id, f.secret) for f in farms}) == 1
    assert len(farms[0].secret) == 32
    assert len(await db.query("SELECT * FROM farm")) == 1


@pytest_twisted.ensureDeferred
async def test_a_master_with_a_local_files_directory_is_refused_when_the_farm_shares_one(
    reactor: Any, dsn: str, tmp_path: Path, captured_log: Any
) -> None:
    """A and B share a directory; C, pointed at a directory of its own (empty, or another
    farm's), does not start, and says which directory it should have."""
    captured_log.allow_errors(StartupError)
    shared = tmp_path / "shared"
    async with _masters(reactor, dsn, tmp_path, shared) as (a, _b):
        farm = await farm_identity(_lib(a)._db)
        errors = []
        for local in (tmp_path / "local", tmp_path / "elsewhere"):
            if local.name == "elsewhere":
                local.mkdir()
                (local / MARKER).write_text("6e2b5c3a-0c55-4b8e-9d4f-2f4a1c0e7d11\n")
            service = BuildmasterService(reactor, _settings(tmp_path / "c", dsn, local))
            service.startService()
            try:
                await service.when_ready()
            except StartupError as e:
                errors.append(str(e))
            else:
                raise AssertionError(f"C started with {local}")
            finally:
                await service.stopService()
        assert errors[0].startswith(
            f"the files directory {tmp_path / 'local'} has no farm-id file, but this farm's"
            " files directory was marked on "
        )
        assert f"(its farm-id holds {farm.id})" in errors[0]
        assert errors[1] == (
            f"the files directory {tmp_path / 'elsewhere'} belongs to another farm (its farm-id"
            f" names 6e2b5c3a-0c55-4b8e-9d4f-2f4a1c0e7d11; this database is farm {farm.id}):"
            " give --files-dir the files directory of this database's farm"
        )
        assert not (tmp_path / "local" / MARKER).exists()


@pytest_twisted.ensureDeferred
async def test_two_unmarked_directories_claimed_at_once_only_one_is_the_farms(
    reactor: Any, dsn: str, db: Database, tmp_path: Path
) -> None:
    farm = await farm_identity(db)
    pools = [Database(reactor, dsn, size=1) for _ in range(2)]
    for pool in pools:
        await pool.connect()

    def run(f: Any, *args: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(f, *args)

    try:
        for d in ("one", "two"):
            (tmp_path / d).mkdir()
        outcomes = await defer.DeferredList(
            [
                defer.Deferred.fromCoroutine(claim_files_dir(p, tmp_path / d, farm.id, run))
                for p, d in zip(pools, ("one", "two"), strict=True)
            ],
            consumeErrors=True,
        )
    finally:
        for pool in pools:
            await pool.close()
    assert sorted(ok for ok, _ in outcomes) == [False, True]
    marked = [d for d in ("one", "two") if (tmp_path / d / MARKER).exists()]
    assert len(marked) == 1
    assert os.listdir(tmp_path / ("two" if marked == ["one"] else "one")) == []


@pytest_twisted.ensureDeferred
async def test_a_collector_whose_clock_runs_ahead_of_the_file_servers_keeps_fresh_files(
    reactor: Any, db: Database, tmp_path: Path
) -> None:
    """A master's clock is an hour ahead of the clock that stamps the shared files (a file
    server's): a file another master has just put in place, not yet recorded, still counts
    as fresh; one written long ago by the files' clock is collected."""
    ahead = ContentStore(tmp_path / "shared", clock=lambda: time.time() + 3600)

    def run(f: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThread(f, *args)

    collector = GarbageCollector(reactor, db, ahead, run)
    paths = []
    for data in (b"just put in place", b"left by a crash long ago"):
        sha256 = hashlib.sha256(data).hexdigest()
        temp = ahead.temp_path()
        writer = ahead.create_temp(temp, direct=False)
        writer.write([data])
        writer.seal()
        paths.append(ahead.publish(temp, sha256))
    fresh, old = paths
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    stats = await collector.collect()
    assert stats.orphan_files == 1
    assert fresh.exists() and not old.exists()


@pytest_twisted.ensureDeferred
async def test_a_files_directory_that_does_not_answer_fails_the_start_on_time(
    reactor: Any, dsn: str, tmp_path: Path, captured_log: Any
) -> None:
    """A hung network mount blocks whoever touches it: the start fails on the deadline,
    saying so, instead of hanging (here the marker is a FIFO nobody writes to, which blocks
    its reader the same way)."""
    captured_log.allow_errors(StartupError)
    files = tmp_path / "files"
    files.mkdir()
    os.mkfifo(files / MARKER)
    settings = attrs.evolve(_settings(tmp_path / "s", dsn, files), files_dir_timeout=0.5)
    service = BuildmasterService(reactor, settings)
    started = time.monotonic()
    service.startService()
    try:
        with pytest.raises(StartupError) as info:
            await service.when_ready()
        assert time.monotonic() - started < 30
        assert str(info.value) == (
            f"the files directory {files} did not answer within 0.5 s: check --files-dir and"
            " its mount"
        )
    finally:
        await service.stopService()
        # let the blocked reader go (it finds the marker empty; nobody waits for it now)
        os.close(os.open(files / MARKER, os.O_WRONLY | os.O_NONBLOCK))
