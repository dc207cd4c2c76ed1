"""Helpers for tests, ours and embedders': real PostgreSQL, simulated builders, a real master.

Long: the public test kit (a throwaway database, a simulated farm, a running master, the trial
mixin, a clocked reactor) is one import for embedders and for our tests; each class stands
alone.

Everything here runs in the caller's reactor, passed in (the module never imports one), and
every function or method that does I/O returns a Deferred, so it serves ``async def`` tests
(pytest-twisted, trial) and callback-style code alike. docs/embedding.md has a worked
example for ``twisted.trial``.

* :class:`ThrowawayPostgres`: a private PostgreSQL cluster in a temporary directory, with
  the schema migrated once into a template database; :meth:`~ThrowawayPostgres.new_database`
  gives each test a fresh copy. :func:`shared_postgres` starts one for the whole process
  (its watchdog stops it, and removes its files, when the process ends).
* :class:`TestMaster`: a running :class:`~buildmaster.service.BuildmasterService` (database,
  web server, librarian, master) on such a database, with the sample data (ubuntu/hoary with
  a chroot for i386), a farm of simulated builders (slavesim) registered as builders, and
  helpers to queue builds and wait for them.
* :class:`MasterTestMixin`: for ``twisted.trial.unittest.TestCase``: ``await
  self.start_master(reactor)`` gives a :class:`TestMaster`, stopped (and its database
  dropped) by the test's cleanups.
* :class:`FarmHarness`: lower level, for tests that drive a :class:`BuilddMaster` by hand: a
  librarian and the operator API served on 127.0.0.1, a farm, and a master that is not
  started (with a ``Clock`` of the test's, on a :class:`ClockedReactor`).
* :func:`master_process`: ``twistd -n buildmaster`` in a process of its own.
* :func:`wait_for`: poll a condition with a deadline (a deadline that only ends a test that
  hangs: it measures nothing); :func:`advance`: move the ``Clock`` of a master built with
  one and wait for the scans it set off.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, task

from buildmaster.config import MasterConfig
from buildmaster.enums import BuildStatus, PackagePublishingPocket, SourcePackageFileType
from buildmaster.librarian import Librarian
from buildmaster.librarian.farm import farm_identity
from buildmaster.librarian.guard import GuardedSite
from buildmaster.master import BuilddMaster
from buildmaster.metrics import Metrics
from buildmaster.model import Build, Builder, LibraryFile
from buildmaster.sampledata import SampleData, load_sample_data
from buildmaster.service import BuildmasterService, ServiceSettings, mount_librarian, web_root
from buildmaster.store import Database, Store
from buildmaster.store.cluster import PostgresCluster
from buildmaster.store.schema import migrate
from buildmaster.web import bearer_verifier, mount_operator_web
from buildmaster.web.api import ApiContext, ApiLimits

__all__ = [
    "ClockedReactor",
    "FarmHarness",
    "add_simulated_builder",
    "advance",
    "master_process",
    "MasterTestMixin",
    "TestMaster",
    "ThrowawayPostgres",
    "prepare_sample_world",
    "queue_build",
    "shared_postgres",
    "wait_for",
]

_ROOT = Path(__file__).resolve().parent.parent

#: Adds a file to the librarian: ``(name, content, content_type, restricted)`` -> the file.
AddFile = Callable[..., Awaitable[LibraryFile]]


# -- PostgreSQL ----------------------------------------------------------------------------


class ThrowawayPostgres:
    """A private PostgreSQL cluster for tests, and fresh databases in it.

    The schema is migrated once into the template database :attr:`TEMPLATE`; every
    :meth:`new_database` is a copy of it (``CREATE DATABASE ... TEMPLATE``), cheap enough for
    one per test. Made by :meth:`start`.
    """

    TEMPLATE = "buildmaster_template"

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self._names = itertools.count()

    @classmethod
    def start(cls, reactor: Any, fsync: bool = False) -> defer.Deferred[ThrowawayPostgres]:
        """Create and start a cluster in a new temporary directory (initdb and pg_ctl run
        through ``reactor``'s process API) and migrate the template database.

        Fires with the :class:`ThrowawayPostgres`; fails with
        :class:`~buildmaster.store.cluster.PostgresNotFound` (the message says how to
        install the server binaries) or :class:`~buildmaster.store.cluster.ClusterError`.
        """
        return defer.Deferred.fromCoroutine(cls._start(reactor, fsync))

    @classmethod
    async def _start(cls, reactor: Any, fsync: bool) -> ThrowawayPostgres:
        cluster = PostgresCluster.throwaway_cluster(fsync=fsync)
        await cluster.start_async(reactor)
        self = cls(cluster)
        try:
            await self._admin(reactor, f'CREATE DATABASE "{self.TEMPLATE}"')
            template = Database(reactor, cluster.dsn(self.TEMPLATE), size=1)
            await template.connect()
            try:
                await migrate(template)
            finally:
                await template.close()
        except BaseException:
            await cluster.stop_async(reactor)  # its watchdog removes the directory
            raise
        return self

    async def _admin(self, reactor: Any, statement: str) -> None:
        admin = Database(reactor, self.cluster.dsn("postgres"), size=1)
        await admin.connect()
        try:
            await admin.execute(statement)
        finally:
            await admin.close()

    def new_database(self, reactor: Any) -> defer.Deferred[str]:
        """Fires with the DSN of a new database holding the current schema and nothing else."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        statement = f'CREATE DATABASE "{name}" TEMPLATE "{self.TEMPLATE}" STRATEGY FILE_COPY'

        async def create() -> str:
            await self._admin(reactor, statement)
            return self.cluster.dsn(name)

        return defer.Deferred.fromCoroutine(create())

    def drop_database(self, reactor: Any, dsn: str) -> defer.Deferred[None]:
        """Drop a database made by :meth:`new_database` (its sessions are ended first)."""
        name = dict(part.split("=", 1) for part in dsn.split())["dbname"]
        statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        return defer.Deferred.fromCoroutine(self._admin(reactor, statement))

    def stop(self, reactor: Any) -> defer.Deferred[None]:
        """Stop the server; its watchdog then removes the directory."""
        return defer.Deferred.fromCoroutine(self.cluster.stop_async(reactor))


_shared: list[ThrowawayPostgres] = []
_shared_lock = defer.DeferredLock()


def shared_postgres(reactor: Any) -> defer.Deferred[ThrowawayPostgres]:
    """One :class:`ThrowawayPostgres` for the whole process, started by the first call.

    It is never stopped by a test: its watchdog process stops the server and removes its
    files when this process ends, however it ends. Fails like
    :meth:`ThrowawayPostgres.start` (every call, when the start failed).
    """

    async def get() -> ThrowawayPostgres:
        await _shared_lock.acquire()
        try:
            if not _shared:
                _shared.append(await ThrowawayPostgres.start(reactor))
            return _shared[0]
        finally:
            _shared_lock.release()

    return defer.Deferred.fromCoroutine(get())


# -- a world to build in --------------------------------------------------------------------


def prepare_sample_world(store: Store, add_file: AddFile) -> defer.Deferred[SampleData]:
    """Load the sample data and make hoary/i386 ready to build: a chroot (stored with
    ``add_file``), without the seed's two queue entries and its builders bob and frog (their
    ports are closed: a test brings builders of its own).

    Fires with the :class:`~buildmaster.sampledata.SampleData`.
    """

    async def prepare() -> SampleData:
        data = await load_sample_data(store)
        chroot = await add_file("chroot-hoary-i386.tar.gz", b"chroot" * 100)
        await store.distributions.addOrUpdateChroot(data.hoary_i386, chroot.id)
        await store.queue.destroySelf(data.lost_job_id)
        await store.queue.destroySelf(data.waiting_job_id)
        for builder in (data.bob, data.frog):
            await store.builders.set_active(builder, False)
        return data

    return defer.Deferred.fromCoroutine(prepare())


def queue_build(
    store: Store, data: SampleData, add_file: AddFile, name: str, ppa: bool = False
) -> defer.Deferred[Build]:
    """A source ``name`` 1.0 (its ``.dsc`` stored with ``add_file``) and its hoary/i386
    build, queued in the primary archive (``ppa``: in cprov's PPA, for virtualized builders).

    Fires with the :class:`~buildmaster.model.Build` (NEEDSBUILD, in the queue).
    """

    async def queue() -> Build:
        dsc = await add_file(f"{name}_1.0.dsc", f"Source: {name}\n".encode(), "text/plain")
        spr = await store.sources.new(
            name, "1.0", data.hoary, files=[(dsc.id, SourcePackageFileType.DSC)]
        )
        archive = data.cprov_ppa if ppa else data.primary
        build = await store.builds.createBuild(
            spr, data.hoary_i386, PackagePublishingPocket.RELEASE, archive
        )
        await store.queue.createBuildQueueEntry(build)
        return build

    return defer.Deferred.fromCoroutine(queue())


def add_simulated_builder(
    farm: Any, store: Store, data: SampleData, name: str, virtualized: bool = False
) -> defer.Deferred[tuple[Any, Builder]]:
    """Start a simulated i386 builder in ``farm`` (slavesim) and register it (a virtualized
    one with the VM host ``<name>.vm``). Fires with the slavesim builder and its row."""

    async def add() -> tuple[Any, Builder]:
        sim = await farm.start_builder(name, ("i386",))
        builder = await store.builders.new(
            name,
            sim.url,
            [data.processor_386],
            virtualized=virtualized,
            vm_host=f"{name}.vm" if virtualized else None,
        )
        return sim, builder

    return defer.Deferred.fromCoroutine(add())


async def _add_file(
    librarian: Librarian,
    name: str,
    content: bytes,
    content_type: str = "application/octet-stream",
    restricted: bool = False,
) -> LibraryFile:
    alias = await librarian.addFile(
        name, len(content), io.BytesIO(content), content_type, restricted
    )
    return await librarian.get(alias)


# -- a running master -----------------------------------------------------------------------


class TestMaster:
    """A running :class:`~buildmaster.service.BuildmasterService` with simulated builders.

    Made by :meth:`start`; :meth:`stop` stops the master, then the builders.

    :ivar service: the service (``service.master`` is the
        :class:`~buildmaster.master.BuilddMaster` with the operations on builds).
    :ivar store: the database.
    :ivar data: the sample data (:func:`prepare_sample_world`).
    :ivar farm: the slavesim ``Farm``; ``sims`` maps builder names to its builders.
    """

    __test__ = False  # not a test class, whatever a collector thinks of the name

    def __init__(self, service: BuildmasterService, farm: Any, data: SampleData) -> None:
        assert service.store is not None and service.master is not None
        self.service = service
        self.store: Store = service.store
        self.master: BuilddMaster = service.master
        self.farm = farm
        self.data = data
        self.sims: dict[str, Any] = {}
        self._counter = itertools.count(1)

    @classmethod
    def start(
        cls,
        reactor: Any,
        directory: Path,
        dsn: str,
        *,
        builders: int = 2,
        virtualized_builders: int = 0,
        build_time: float = 1.0,
        config: MasterConfig | None = None,
    ) -> defer.Deferred[TestMaster]:
        """Start a master on the (freshly migrated, empty) database ``dsn``, its web server
        on 127.0.0.1 (port 0) and its files in ``directory``; load the sample world; start
        ``builders`` trusted and ``virtualized_builders`` virtualized simulated i386
        builders (builds take ``build_time`` seconds) and register them.

        Fires with the :class:`TestMaster` once the master has scanned them; fails with
        what stopped the service from starting (everything started is stopped again).
        """
        return defer.Deferred.fromCoroutine(
            cls._start(reactor, directory, dsn, builders, virtualized_builders, build_time, config)
        )

    @classmethod
    async def _start(
        cls,
        reactor: Any,
        directory: Path,
        dsn: str,
        builders: int,
        virtualized_builders: int,
        build_time: float,
        config: MasterConfig | None,
    ) -> TestMaster:
        from slavesim import Farm

        settings = ServiceSettings(
            state_dir=directory / "state",
            dsn=dsn,
            port="tcp:0:interface=127.0.0.1",
            master=config or MasterConfig(scan_interval=1.0, vm_resume_command="true %(vm_host)s"),
            pool_size=4,
        )
        service = BuildmasterService(reactor, settings)
        service.startService()
        farm = Farm(reactor, directory / "slavesim", build_time=build_time)
        try:
            await service.when_ready()
            assert service.store is not None and service.librarian is not None
            data = await prepare_sample_world(
                service.store, functools.partial(_add_file, service.librarian)
            )
            self = cls(service, farm, data)
            for i in range(builders):
                await self.add_builder(f"trusted{i}")
            for i in range(virtualized_builders):
                await self.add_builder(f"virtual{i}", virtualized=True)
        except BaseException:
            await service.stopService()
            await farm.stop()
            raise
        return self

    def add_builder(self, name: str, virtualized: bool = False) -> defer.Deferred[Builder]:
        """Start a simulated i386 builder, register it, and have the master scan it.

        Fires with its :class:`~buildmaster.model.Builder` row; its slavesim builder is
        ``sims[name]``.
        """

        async def add() -> Builder:
            sim, builder = await add_simulated_builder(
                self.farm, self.store, self.data, name, virtualized
            )
            self.sims[name] = sim
            await self.master.scan_all()
            return builder

        return defer.Deferred.fromCoroutine(add())

    def add_file(
        self,
        name: str,
        content: bytes,
        content_type: str = "application/octet-stream",
        restricted: bool = False,
    ) -> defer.Deferred[LibraryFile]:
        """Store ``content`` in the librarian; fires with the file."""
        assert self.service.librarian is not None
        return defer.Deferred.fromCoroutine(
            _add_file(self.service.librarian, name, content, content_type, restricted)
        )

    def queue(self, name: str | None = None, ppa: bool = False) -> defer.Deferred[Build]:
        """Queue a build of a new source (``pkg1``, ``pkg2``, ... by default; see
        :func:`queue_build`). Fires with the build."""
        name = name or f"pkg{next(self._counter)}"
        return queue_build(self.store, self.data, self.add_file, name, ppa)

    def wait_for_build(
        self, build: Build | int, *states: BuildStatus, timeout: float = 60.0
    ) -> defer.Deferred[Build]:
        """Fires with the build once it is in one of ``states`` (FULLYBUILT by default);
        fails with ``AssertionError`` after ``timeout`` seconds."""
        wanted = states or (BuildStatus.FULLYBUILT,)
        build_id = build if isinstance(build, int) else build.id
        found: list[Build] = []

        async def there() -> bool:
            found[:] = [await self.store.builds.get(build_id)]
            return found[0].status in wanted

        async def wait() -> Build:
            what = f"build {build_id} to be {'/'.join(s.name for s in wanted)}"
            await wait_for(self.service.reactor, there, timeout, what)
            return found[0]

        return defer.Deferred.fromCoroutine(wait())

    def stop(self) -> defer.Deferred[None]:
        """Stop the master (the whole service), then the simulated builders."""

        async def stop() -> None:
            if self.service.running:
                await self.service.stopService()
            await self.farm.stop()

        return defer.Deferred.fromCoroutine(stop())


class _TrialCase(Protocol):
    def addCleanup(self, f: Callable[..., object], *args: Any, **kwargs: Any) -> None: ...

    def mktemp(self) -> str: ...


class MasterTestMixin:
    """For ``twisted.trial.unittest.TestCase``: a running master per test.

    ::

        class MyTests(MasterTestMixin, unittest.TestCase):
            async def test_a_build(self) -> None:
                farm = await self.start_master(reactor, builders=1)
                build = await farm.queue("hello")
                await farm.wait_for_build(build)

    The database is a fresh copy of the template of the process-wide
    :func:`shared_postgres`; the test's cleanups stop the master and its builders, then drop
    the database, so the reactor is left clean (trial checks it).
    """

    def start_master(self, reactor: Any, **options: Any) -> defer.Deferred[TestMaster]:
        """Fires with a :class:`TestMaster` (``options``: those of :meth:`TestMaster.start`)."""
        case: _TrialCase = self  # type: ignore[assignment]
        return defer.Deferred.fromCoroutine(_start_for(case, reactor, options))


async def _start_for(case: _TrialCase, reactor: Any, options: dict[str, Any]) -> TestMaster:
    postgres = await shared_postgres(reactor)
    dsn = await postgres.new_database(reactor)
    case.addCleanup(postgres.drop_database, reactor, dsn)
    master = await TestMaster.start(reactor, Path(case.mktemp()).absolute(), dsn, **options)
    case.addCleanup(master.stop)
    return master


# -- a master in a process of its own, and a master driven by hand -------------------------


def master_process(dsn: str, state: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``twistd -n buildmaster`` in a process of its own (this source tree first on its
    path), on the database ``dsn``, logging to ``log``, with a web server on any free
    port, a 0.3 s scan interval and a 5 s call timeout, and ``args`` besides."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(log),
            "buildmaster",
            "--dsn",
            dsn,
            "--state-dir",
            str(state),
            "--port",
            "0",
            "--scan-interval",
            "0.3",
            "--socket-timeout",
            "5",
            *args,
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class ClockedReactor:
    """A reactor whose time is a :class:`~twisted.internet.task.Clock` the test advances:
    connections, listening ports, processes and threads are the real reactor's, every
    deadline and timer (``seconds``, ``callLater``) is the clock's.

    A master given one polls real builders over real sockets while its timeouts (a call's
    deadline, a stuck builder's) move only when the test says so.
    """

    def __init__(self, reactor: Any, clock: task.Clock) -> None:
        self._reactor = reactor
        self.clock = clock

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class FarmHarness:
    """A librarian served on 127.0.0.1 (port 0), a slavesim farm and a :class:`BuilddMaster`
    that is not started: call its API directly, or ``startService`` it. The master's web
    server also serves the operator API (``base_url + "/api/v1"``), ``/metrics`` and the
    health checks. The database is the caller's. Made by :meth:`start`."""

    def __init__(self, reactor: Any, store: Store, directory: Path) -> None:
        self.reactor = reactor
        self.store = store
        self.directory = directory
        self.librarian: Librarian
        self.master: BuilddMaster
        self.farm: Any
        self._port: Any = None
        self._site_root = web_root()
        self.base_url = ""
        self.metrics = Metrics()

    @classmethod
    def start(
        cls,
        reactor: Any,
        store: Store,
        directory: Path,
        config: MasterConfig | None = None,
        build_time: float = 1.0,
        farm_clock: Any = None,
        master_clock: task.Clock | None = None,
        api_limits: ApiLimits | None = None,
    ) -> defer.Deferred[FarmHarness]:
        """Start the librarian's web server and an empty slavesim farm.

        :param farm_clock: the simulated builders' clock (build times, withheld answers);
            the reactor by default.
        :param master_clock: the master's clock (:class:`BuilddMaster`'s ``clock``; the
            reactor by default): with a :class:`~twisted.internet.task.Clock`, the master
            runs on a :class:`ClockedReactor` (real sockets and processes, the clock's
            timers), so no time passes for it unless the test advances the clock.
        :param api_limits: the operator API's limits.
        """
        return defer.Deferred.fromCoroutine(
            cls._start(
                reactor, store, directory, config, build_time, farm_clock, master_clock, api_limits
            )
        )

    @classmethod
    async def _start(
        cls,
        reactor: Any,
        store: Store,
        directory: Path,
        config: MasterConfig | None,
        build_time: float,
        farm_clock: Any,
        master_clock: task.Clock | None,
        api_limits: ApiLimits | None,
    ) -> FarmHarness:
        from slavesim import Farm

        self = cls(reactor, store, directory)
        secret = (await farm_identity(store.db)).secret  # the farm's, as a master's
        # the public URL is only known once listening: bind first, then build the librarian
        site = GuardedSite(
            self._site_root,
            lambda: getattr(self, "librarian", None),
            verify_bearer=bearer_verifier(lambda: store),
        )
        self._port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.base_url = f"http://127.0.0.1:{self._port.getHost().port}"
        public_url = f"{self.base_url}/librarian/"
        self.librarian = Librarian(reactor, store.db, directory / "librarian", public_url, secret)
        mount_librarian(self._site_root, self.librarian)
        self.farm = Farm(
            reactor,
            directory / "slavesim",
            build_time=build_time,
            clock=farm_clock,
            history_size=100_000,
        )
        config = config or MasterConfig()
        master_reactor = reactor if master_clock is None else ClockedReactor(reactor, master_clock)
        self.master = BuilddMaster(
            master_reactor, store, self.librarian, config, self.metrics, clock=master_clock
        )
        mount_operator_web(
            self._site_root,
            ApiContext(
                store=store,
                librarian=self.librarian,
                clock=master_reactor,
                operations=self.master,
                farm=self.master,
                metrics=self.metrics,
                limits=api_limits or ApiLimits(),
            ),
            max_cycle_age=max(3 * config.scan_interval, 30.0),
        )
        return self

    def add_file(
        self,
        name: str,
        content: bytes,
        content_type: str = "application/octet-stream",
        restricted: bool = False,
    ) -> defer.Deferred[LibraryFile]:
        """Store ``content`` in the librarian; fires with the file."""
        return defer.Deferred.fromCoroutine(
            _add_file(self.librarian, name, content, content_type, restricted)
        )

    def start_builder(self, name: str, arch: str = "i386", port: int = 0) -> defer.Deferred[Any]:
        """A simulated builder listening on 127.0.0.1; fires with its slavesim builder."""
        d: defer.Deferred[Any] = self.farm.start_builder(name, (arch,), port=port)
        return d

    def stop(self) -> defer.Deferred[None]:
        """Stop the master (or cut its calls short), the farm and the web server."""

        async def stop() -> None:
            if self.master.running:
                await self.master.stopService()
            else:
                self.master.http.abort_all()
            await self.farm.stop()
            if self._port is not None:
                await self._port.stopListening()

        return defer.Deferred.fromCoroutine(stop())


def advance(
    reactor: Any,
    clock: Any,
    master: BuilddMaster,
    seconds: float,
    still_busy: Iterable[str] = (),
) -> defer.Deferred[None]:
    """Move a master's ``Clock`` on by ``seconds`` (a hair more: sums of small steps can
    fall short of the times the scan loop computes), then wait, on ``reactor``, until the
    scans that started are over (:attr:`BuilddMaster.scans_under_way`), except those of the
    builders named in ``still_busy`` (they wait for something on the clock, an answer held
    back, say)."""
    clock.advance(seconds + 1e-4)
    waiting = set(still_busy)

    def over() -> bool:
        busy = (w for w in master.workers.values() if w.builder.name not in waiting)
        return not master.ticking and not any(w.busy for w in busy)

    return wait_for(reactor, over, 60, "the scans to end")


def wait_for(
    reactor: Any, condition: Callable[[], Any], timeout: float = 60.0, what: str = ""
) -> defer.Deferred[None]:
    """Poll ``condition`` (sync, a coroutine or a Deferred) every 50 ms until it is true.

    Fires with ``None``; fails with ``AssertionError`` after ``timeout`` seconds of
    ``reactor``'s time. The deadline only ends a test that would otherwise hang: make it
    generous, and never let a test's verdict depend on it.
    """

    async def poll() -> None:
        deadline = reactor.seconds() + timeout
        while True:
            result = condition()
            if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
                result = await result
            if result:
                return
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}")
            await task.deferLater(reactor, 0.05, lambda: None)

    return defer.Deferred.fromCoroutine(poll())
