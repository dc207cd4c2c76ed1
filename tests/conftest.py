"""Test fixtures: a throwaway PostgreSQL cluster, a fresh database per test, log capture.

The cluster is started once per test session (initdb + pg_ctl into a temporary directory,
fsync off, a free port on 127.0.0.1). The schema is migrated once into a template database;
each test that asks for a database gets a copy of it (``CREATE DATABASE ... TEMPLATE``),
dropped again afterwards.

The reactor is not imported at module level (pytest-twisted installs it first).
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import hypothesis
import psycopg2
import pytest
import pytest_twisted
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from zope.interface import implementer

from buildmaster.config import MasterConfig
from buildmaster.enums import BuildStatus, PackagePublishingPocket, SourcePackageFileType
from buildmaster.librarian import Librarian
from buildmaster.librarian.farm import farm_identity
from buildmaster.model import Archive, Build, Builder
from buildmaster.sampledata import SampleData, load_sample_data
from buildmaster.store import Store
from buildmaster.store.cluster import PostgresCluster
from buildmaster.testing import (
    FarmHarness,
    add_simulated_builder,
    prepare_sample_world,
    queue_build,
)

TEMPLATE = "buildmaster_template"

# Hypothesis holds every example to a deadline of the wall clock (200 ms) unless told
# otherwise: a loaded machine breaks that, and what the properties check is results.
hypothesis.settings.register_profile("buildmaster", deadline=None)
hypothesis.settings.load_profile("buildmaster")


@implementer(ILogObserver)
class CapturedLog:
    """Every log event emitted during one test, with helpers to look at them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.allowed_errors: list[type[BaseException]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def messages(self, level: LogLevel | None = None) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]

    def warnings(self) -> list[str]:
        return self.messages(LogLevel.warn)

    def allow_errors(self, *types: type[BaseException]) -> None:
        """Let logged errors of these types pass (the test expects them)."""
        self.allowed_errors.extend(types)

    def unexpected_errors(self) -> list[dict[str, Any]]:
        bad = []
        for event in self.events:
            failure = event.get("log_failure")
            if failure is not None:
                if self.allowed_errors and failure.check(*self.allowed_errors):
                    continue
                bad.append(event)
            elif event.get("log_level") in (LogLevel.error, LogLevel.critical):
                if not self.allowed_errors:
                    bad.append(event)
        return bad


@pytest.fixture(autouse=True)
def collector_as_python_sets_it() -> Iterator[None]:
    """Undo what a test's ``twistd`` service did to the garbage collector (process-wide)."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.fixture(autouse=True)
def captured_log() -> Iterator[CapturedLog]:
    """Capture log events; a logged error or unhandled Deferred failure fails the test."""
    log = CapturedLog()
    globalLogPublisher.addObserver(cast(ILogObserver, log))
    try:
        yield log
        gc.collect()  # unhandled errors in Deferreds are logged when they are collected
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, log))
    bad = log.unexpected_errors()
    if bad:
        from twisted.logger import formatEvent

        details = []
        for event in bad:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            details.append(text)
        pytest.fail("errors were logged during the test:\n" + "\n---\n".join(details))


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A temporary directory that another user may pass through (not list): the PostgreSQL
    server runs as user postgres when the tests run as root, and pytest's ``tmp_path`` lies
    under a directory only its owner may enter. Tests that start a cluster of their own (an
    embedded master, ``twistd buildmaster``) put it here."""
    directory = Path(tempfile.mkdtemp(prefix="buildmaster-test-"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def reactor() -> Any:
    """The running reactor (installed by pytest-twisted)."""
    from twisted.internet import reactor as the_reactor

    return the_reactor


@pytest.fixture
def clock(reactor: Any) -> Any:
    """A ``Clock`` that starts at the reactor's time (so that the times a master writes to
    the database look right) and moves only when the test advances it."""
    from twisted.internet.task import Clock

    fake = Clock()
    fake.advance(reactor.seconds())
    return fake


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the whole session, with the migrated template database."""
    cluster = PostgresCluster.throwaway_cluster(fsync=False)
    cluster.start()
    try:
        _create_database(cluster, TEMPLATE)
        subprocess.run(
            [sys.executable, "-m", "buildmaster.store.schema", "--dsn", cluster.dsn(TEMPLATE)],
            check=True,
            capture_output=True,
        )
        yield cluster
    finally:
        cluster.stop()


def _admin(cluster: PostgresCluster) -> Any:
    conn = psycopg2.connect(cluster.dsn("postgres"))
    conn.autocommit = True
    return conn


def _create_database(cluster: PostgresCluster, name: str, template: str | None = None) -> None:
    conn = _admin(cluster)
    try:
        with conn.cursor() as cur:
            if template:
                cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
            else:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def _drop_database(cluster: PostgresCluster, name: str) -> None:
    conn = _admin(cluster)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


_counter = itertools.count()


@pytest.fixture
def dsn(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database holding the current schema and nothing else."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    _create_database(pg_cluster, name, TEMPLATE)
    try:
        yield pg_cluster.dsn(name)
    finally:
        _drop_database(pg_cluster, name)


@pytest.fixture
def empty_dsn(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database without any schema (for migration tests)."""
    name = f"empty_{os.getpid()}_{next(_counter)}"
    _create_database(pg_cluster, name)
    try:
        yield pg_cluster.dsn(name)
    finally:
        _drop_database(pg_cluster, name)


@pytest.fixture
def refuse_connections(dsn: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``with refuse_connections():`` the test's database accepts no new connection (the
    ones open stay), as a database that is away for new sessions."""
    database = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    admin_dsn = dsn.replace(f"dbname={database}", "dbname=postgres")

    def allow(admin: Any, allowed: bool) -> None:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')

    @contextlib.contextmanager
    def refused() -> Iterator[None]:
        admin = psycopg2.connect(admin_dsn)
        admin.autocommit = True
        try:
            allow(admin, False)
            yield
        finally:
            allow(admin, True)
            admin.close()

    return refused


@pytest_twisted.async_yield_fixture
async def db(reactor: Any, dsn: str) -> AsyncIterator[Any]:
    """A connected :class:`buildmaster.store.database.Database` on a fresh database."""
    from buildmaster.store.database import Database

    database = Database(reactor, dsn, size=3)
    await database.connect()
    yield database
    await database.close()


@pytest_twisted.async_yield_fixture
async def store(db: Any) -> AsyncIterator[Any]:
    """A :class:`buildmaster.store.Store` on a fresh database."""
    from buildmaster.store import Store

    yield Store(db)


# -- a farm to work with ------------------------------------------------------------------


class World:
    """Sample data with hoary/i386 ready to build (chroot), plus helpers."""

    def __init__(self, harness: FarmHarness, store: Store, data: SampleData) -> None:
        self.harness = harness
        self.store = store
        self.data = data
        self.counter = 0

    async def builder(self, name: str, virtualized: bool = False) -> tuple[Any, Builder]:
        return await add_simulated_builder(
            self.harness.farm, self.store, self.data, name, virtualized
        )

    async def queue(self, name: str | None = None, ppa: bool = False) -> Build:
        self.counter += 1
        return await queue_build(
            self.store, self.data, self.harness.add_file, name or f"pkg{self.counter}", ppa
        )


@pytest_twisted.async_yield_fixture
async def make_world(
    reactor: Any, store: Store, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    harnesses: list[FarmHarness] = []

    async def make(
        config: MasterConfig | None = None,
        build_time: float = 3600.0,
        clock: Any = None,
        farm_clock: Any = None,
        master_clock: Any = None,
    ) -> World:
        """A world; with ``clock`` (a ``Clock``), the master's and the builders' time
        (``farm_clock`` and ``master_clock`` set one of them)."""
        harness = await FarmHarness.start(
            reactor,
            store,
            tmp_path,
            config or MasterConfig(),
            build_time=build_time,
            farm_clock=farm_clock if farm_clock is not None else clock,
            master_clock=master_clock if master_clock is not None else clock,
        )
        harnesses.append(harness)
        return World(harness, store, await prepare_sample_world(store, harness.add_file))

    yield make
    for harness in harnesses:
        await harness.stop()


class ProcessWorld:
    """For a master in a process of its own (``buildmaster.testing.master_process``): a
    state directory, the sample data without the seed's jobs and builders, hoary/i386 with a
    chroot, and the librarian the master will serve from (same directory, same database)."""

    def __init__(self, store: Store, data: SampleData, state: Path, librarian: Librarian):
        self.store = store
        self.data = data
        self.state = state
        self.librarian = librarian

    async def add(self, name: str, content: bytes, restricted: bool = False) -> int:
        """Store a file in the librarian; its alias id."""
        return int(
            await self.librarian.addFile(
                name, len(content), io.BytesIO(content), "application/octet-stream", restricted
            )
        )

    async def queue(
        self, name: str, archive: Archive | None = None, restricted: bool = False
    ) -> Build:
        """A build of source ``name`` 1.0 for hoary/i386 (in the primary archive by
        default), waiting in the queue."""
        dsc = await self.add(f"{name}_1.0.dsc", f"Source: {name}\n".encode(), restricted)
        spr = await self.store.sources.new(
            name, "1.0", self.data.hoary, files=[(dsc, SourcePackageFileType.DSC)]
        )
        build = await self.store.builds.createBuild(
            spr,
            self.data.hoary_i386,
            PackagePublishingPocket.RELEASE,
            archive or self.data.primary,
        )
        await self.store.queue.createBuildQueueEntry(build)
        return build

    async def count(self, builds: list[Build], states: list[BuildStatus]) -> int:
        """How many of ``builds`` are in one of ``states``."""
        rows = await self.store.db.query(
            "SELECT count(*) FROM build WHERE id = ANY(%s) AND buildstate = ANY(%s)",
            ([b.id for b in builds], [int(s) for s in states]),
        )
        return int(rows[0][0])


@pytest_twisted.async_yield_fixture
async def process_world(reactor: Any, store: Store, tmp_path: Path) -> AsyncIterator[ProcessWorld]:
    state = tmp_path / "state"
    state.mkdir()
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    for name in ("bob", "frog"):
        await store.builders.set_active(await store.builders.getByName(name), False)
    librarian = Librarian(
        reactor,
        store.db,
        state / "librarian",
        "http://unused/",
        (await farm_identity(store.db)).secret,  # the master process uses the farm's too
    )
    world = ProcessWorld(store, data, state, librarian)
    chroot = await world.add("chroot.tar.gz", b"chroot" * 50)
    await store.distributions.addOrUpdateChroot(data.hoary_i386, chroot)
    yield world


# -- the operator API ---------------------------------------------------------------------


class ApiWorld:
    """A :class:`World` whose master serves the operator API, with clients for it."""

    def __init__(self, world: World, admin_token: str) -> None:
        from api_support import ApiClient

        self.world = world
        self.store = world.store
        self.harness = world.harness
        self.reactor = world.harness.reactor
        self.anonymous = ApiClient(self.reactor, world.harness.base_url)
        self.admin = self.anonymous.with_token(admin_token)

    async def uploader(self, *archives: Any) -> Any:
        """A client with an uploader token to these archives."""
        new = await self.store.tokens.create(archives=list(archives), description="a test uploader")
        return self.anonymous.with_token(new.secret)

    def close(self) -> None:
        self.anonymous.close()


@pytest_twisted.async_yield_fixture
async def api_world(make_world: Callable[..., Any]) -> AsyncIterator[ApiWorld]:
    """Sample data, a master (not started) serving the API, an admin token's client."""
    world = await make_world(
        MasterConfig(scan_interval=0.2, vm_resume_command="true %(vm_host)s"), 0.3
    )
    token = await world.store.tokens.create(admin=True, description="the test admin")
    api = ApiWorld(world, token.secret)
    yield api
    api.close()
