"""The whole master as one service, started and stopped in a fixed order.

Long: the start and stop order of the whole master is this module's point: read in one place,
it stays right.

Start: the database (the embedded private cluster when no DSN is given; migrations), the web
server (with the librarian under ``/librarian/``), the librarian's garbage collector, the
scanning master, and the demo (if asked). Stop: the same, backwards: scanning stops before
the web server, and the database (and its private cluster) closes last. Twisted's
``MultiService`` stops its children all at once, so the order is written out here.

Web only (``ServiceSettings(web_only=True)``, ``twistd buildmaster --web-only``): the same
web server (API, pages, ``/metrics``, health checks, the librarian's URLs) over a farm's
database, with no scanning master: the process holds no builder and does not count among the
masters that share them (:mod:`buildmaster.ownership`). Its operations go through the
database (:class:`~buildmaster.operations.FarmOperations`); docs/deployment.md says when to
run one and which periodic tasks it runs.

Embeddable: ``BuildmasterService(reactor, settings)`` can live in any Twisted application
(docs/embedding.md); ``tap.py`` builds one for ``twistd buildmaster``. Its start runs in the
background (``startService`` returns at once): :meth:`BuildmasterService.when_ready` tells
when the master runs, or why it could not start.

Starting fails fast, with :class:`StartupError` and one line that says what to fix, when the
state directory or the librarian's files directory is unusable (or the latter belongs to
another farm), the database cannot be reached or let in, the web server cannot listen,
builders could not reach the librarian's address, or the process may not open enough files
for the registered builders.
"""

from __future__ import annotations

import os
import pwd
import resource as rlimits
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
import psycopg2
import psycopg2.errors
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.application import service
from twisted.internet import defer, endpoints, error, threads
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import pages, resource, server

from buildmaster import openfiles
from buildmaster.config import MasterConfig
from buildmaster.librarian import Librarian
from buildmaster.librarian.errors import LibrarianError
from buildmaster.librarian.farm import (
    FilesDirError,
    check_files_dir,
    claim_files_dir,
    farm_identity,
)
from buildmaster.librarian.guard import GuardedSite
from buildmaster.librarian.tokens import read_secret_file
from buildmaster.master import BuilddMaster
from buildmaster.masterfaults import DroppedConnectionWatch
from buildmaster.metrics import Metrics
from buildmaster.operations import FarmOperations
from buildmaster.readiness import Readiness
from buildmaster.store import Database, DatabaseUnavailable, Store
from buildmaster.store.cluster import (
    SERVER_USER_WHEN_ROOT,
    ClusterDirectoryError,
    ClusterError,
    PostgresCluster,
    PostgresNotFound,
    first_unsearchable,
)
from buildmaster.store.embedded import (
    WORK_ROLE,
    embedded_cluster,
    prepare_database,
    relocate_demo,
)
from buildmaster.store.schema import LATEST, SchemaTooNew, current_version, migrate
from buildmaster.web import bearer_verifier, mount_operator_web
from buildmaster.web.api import ApiContext, FarmReader, Operations
from buildmaster.web.api.context import WebOnlyFarm
from buildmaster.web.metrics import FarmMetrics
from buildmaster.web.samples import FarmSampler

__all__ = [
    "ServiceSettings",
    "BuildmasterService",
    "StartupError",
    "web_root",
    "mount_librarian",
]


class StartupError(Exception):
    """The master cannot start: the message (one line) says what to fix."""


@attrs.frozen
class ServiceSettings:
    state_dir: Path
    #: libpq connection string; ``None``: the private cluster in ``state_dir/postgres``
    dsn: str | None = None
    #: strports description of the web server (librarian now, more later)
    port: str = "tcp:8000:interface=127.0.0.1"
    #: where builders reach the librarian; default ``http://<interface>:<port>/librarian/``
    librarian_url: str | None = None
    #: the librarian's bytes; ``None``: ``state_dir/librarian``. Masters that share a
    #: database must share this directory (docs/deployment.md)
    files_dir: Path | None = None
    #: seconds the files directory has to answer its start-up checks (a dead NFS server)
    files_dir_timeout: float = 30.0
    master: MasterConfig = MasterConfig()
    pool_size: int = 8
    #: database connections of the operator API's own (its reads never wait in front of
    #: the master's statements, and at most this many run in PostgreSQL at once)
    api_pool_size: int = 2
    gc_interval: float = 3600.0
    #: log every request to the web server (builders fetch a file or two per build)
    access_log: bool = False
    #: seconds the database has to answer when the master starts
    connect_timeout: float = 30.0
    demo: bool = False
    demo_builders: int = 12
    demo_queue_interval: float = 2.0
    #: seconds between readings of the farm's state for /metrics
    metrics_interval: float = 15.0
    #: serve the web (API, pages, /metrics, health, librarian) over the farm's database
    #: (``dsn``: required) without scanning: no builder held, no share of them taken
    web_only: bool = False


class BuildmasterService(service.Service):
    """Database, web server, librarian, master (and demo), in order.

    Once ready, ``store``, ``librarian``, ``master`` and ``web`` (the listening port) are
    its parts; their own public methods are the API (:class:`~buildmaster.master.BuilddMaster`
    for the operations on builds and builders).

    :param reactor: the reactor everything runs on (passed all the way down).
    :param on_fatal: called with the error when starting fails (``twistd`` stops the
        reactor and exits with status 1); by default the error is only logged. A
        :class:`StartupError` is logged as one line, anything else with its traceback.
    """

    _log = Logger()
    name = "buildmaster"

    def __init__(
        self,
        reactor: Any,
        settings: ServiceSettings,
        on_fatal: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.on_fatal = on_fatal
        self.cluster: PostgresCluster | None = None
        self.db: Database | None = None
        self.api_db: Database | None = None
        #: the operator API's store: its own connections
        self.api_store: Store | None = None
        self.store: Store | None = None
        self.librarian: Librarian | None = None
        self._dropped_watch: ILogObserver | None = None
        self.master: BuilddMaster | None = None
        #: what the operator API's operations go through: the master, or (web only) the
        #: database alone
        self.operations: Operations | None = None
        self.web: Any = None
        self.demo: Any = None
        self._gc: service.Service | None = None
        self.metrics = Metrics()
        self._farm_metrics: FarmMetrics | None = None
        self._sampler: FarmSampler | None = None
        self._threads: ThreadPool | None = None
        self._started: defer.Deferred[None] = defer.succeed(None)
        self._readiness = Readiness()

    def startService(self) -> None:
        super().startService()
        self._started = defer.Deferred.fromCoroutine(self._start())
        self._readiness.watch(self._started)
        self._started.addErrback(self._start_failed)

    def when_ready(self) -> defer.Deferred[None]:
        """Fires with ``None`` once the whole master runs (database migrated, web server
        listening, librarian mounted, first scan done); fails with the error that stopped
        it from starting (a :class:`StartupError` saying what to fix, most often; e.g.
        :class:`~buildmaster.store.database.DatabaseUnavailable` otherwise). Called before
        ``startService``, it waits for the start. Each call gets a Deferred of its own; a
        failure is also logged (and handed to ``on_fatal``) whether or not anybody waits."""
        return self._readiness.wait()

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(StartupError):
            self._log.critical("buildmaster cannot start: {reason}", reason=str(failure.value))
        else:
            self._log.failure("buildmaster could not start", failure)
        if self.on_fatal is not None and failure.value is not None:
            self.on_fatal(failure.value)

    async def _start(self) -> None:
        settings = self.settings
        if settings.web_only:
            _check_web_only(settings)
        _prepare_state_dir(settings.state_dir, separate_server_user=settings.dsn is None)
        files_dir = settings.files_dir or settings.state_dir / "librarian"
        await self._check_files_dir(files_dir)
        if settings.dsn is None:
            dsn = await self._start_embedded_database()
        else:
            dsn = settings.dsn
            self._log.info("Database: {dsn}", dsn=_shown_dsn(dsn))
        self.db = Database(self.reactor, dsn, size=settings.pool_size)
        await _connecting(self.reactor, self.db, dsn, settings.connect_timeout)
        if settings.dsn is not None:
            await self._migrate(dsn)
        self.store = Store(self.db)
        self.api_db = Database(self.reactor, dsn, size=settings.api_pool_size)
        await self.api_db.connect()
        self.api_store = Store(self.api_db)

        # uploads are raw bodies: twisted.web must neither parse them as forms nor keep
        # bodies that nobody may upload (buildmaster.librarian.guard)
        site = GuardedSite(
            web_root(),
            lambda: self.librarian,
            verify_bearer=bearer_verifier(lambda: self.api_store),
        )
        if not settings.access_log:
            site.log = lambda request: None  # type: ignore[method-assign]
        site.noisy = False  # no "Starting factory" lines
        self.web = await _listening(self.reactor, settings.port, site)
        host = self.web.getHost()
        public = settings.librarian_url or _librarian_url(settings.port, host)
        # the librarian's disk work gets threads of its own: the reactor's pool also resolves
        # builder host names, and must not wait behind 20 chroot downloads
        self._threads = ThreadPool(minthreads=2, maxthreads=32, name="librarian")
        self._threads.start()
        secret = await self._farm_files(files_dir)
        self.librarian = Librarian(
            self.reactor,
            self.db,
            files_dir,
            public,
            secret,
            threadpool=self._threads,
        )
        mount_librarian(site.resource, self.librarian)
        self._dropped_watch = cast(ILogObserver, DroppedConnectionWatch(self.librarian))
        globalLogPublisher.addObserver(self._dropped_watch)
        self._log.info(
            "Web server on {host}:{port}; librarian at {url}",
            host=host.host,
            port=host.port,
            url=public,
        )
        self._gc = self.librarian.garbage_collector(settings.gc_interval)
        self._gc.startService()

        farm: FarmReader
        if settings.web_only:
            self.operations, farm = FarmOperations(self.store), WebOnlyFarm()
        else:
            self.master = BuilddMaster(
                self.reactor, self.store, self.librarian, settings.master, self.metrics
            )
            self.operations = farm = self.master
        mount_operator_web(
            site.resource,
            ApiContext(
                store=self.api_store,
                librarian=self.librarian,
                clock=self.reactor,
                operations=self.operations,
                farm=farm,
                metrics=self.metrics,
            ),
            max_cycle_age=max(3 * settings.master.scan_interval, 30.0),
        )
        if settings.demo and self.master is not None:
            from buildmaster.demo import Demo

            self.demo = Demo(self.reactor, self.store, self.librarian, self.master, settings)
            await self.demo.prepare()
        if self.master is not None:
            # the pool's connections, and the session's (LISTEN, builder locks)
            _check_open_files(await self.store.builders.count(), settings.pool_size + 1)
            self.master.startService()
            await self.master.when_ready()
        else:
            _check_open_files(0, settings.pool_size + settings.api_pool_size)
        self._farm_metrics = FarmMetrics(
            self.reactor, self.store, self.metrics, settings.metrics_interval
        )
        self._farm_metrics.startService()
        self._sampler = FarmSampler(self.reactor, self.store.db)
        self._sampler.startService()
        if self.demo is not None:
            self.demo.start_queueing()
        if self.master is None:
            self._log.info("buildmaster is running, web only: it scans no builder")
        else:
            self._log.info("buildmaster is running")

    def _run_at_start(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return _in_daemon_thread(self.reactor, f, *args)

    async def _check_files_dir(self, files_dir: Path) -> None:
        """Make sure the files directory is usable (before anything else starts)."""
        timeout = self.settings.files_dir_timeout
        try:
            # a hung NFS server blocks the thread, not the start: it fails on the deadline
            await _within(self.reactor, self._run_at_start(check_files_dir, files_dir), timeout)
        except defer.TimeoutError:
            raise StartupError(
                f"the files directory {files_dir} did not answer within {timeout:g} s: check"
                " --files-dir and its mount"
            ) from None
        except FilesDirError as e:
            raise StartupError(str(e)) from None

    async def _farm_files(self, files_dir: Path) -> bytes:
        """Make sure the files directory is this farm's (its marker), and return the farm's
        token secret (see :mod:`buildmaster.librarian.farm`)."""
        assert self.db is not None
        try:
            offer = await self._run_at_start(read_secret_file, self.settings.state_dir)
        except (LibrarianError, OSError) as e:
            raise StartupError(f"the librarian's secret: {e}") from None
        farm = await farm_identity(self.db, offer)
        if offer is not None and offer != farm.secret:
            self._log.warn(
                "The librarian secret in {state_dir} is not the farm's (another master's"
                " was adopted first): tokens this master handed out before are no longer"
                " valid; the file is not used any more",
                state_dir=str(self.settings.state_dir),
            )
        try:
            await claim_files_dir(self.db, files_dir, farm.id, self._run_at_start)
        except FilesDirError as e:
            raise StartupError(str(e)) from None
        self._log.info("Librarian files in {dir} (farm {farm})", dir=str(files_dir), farm=farm.id)
        return farm.secret

    async def _start_embedded_database(self) -> str:
        """Start the private cluster, prepare its database; the work role's DSN."""
        self.cluster = cluster = embedded_cluster(self.settings.state_dir)
        self._log.info("Starting the private PostgreSQL cluster in {dir}", dir=cluster.directory)
        try:
            try:
                await cluster.start_async(self.reactor)
            except ClusterDirectoryError as e:
                if not (self.settings.demo and os.geteuid() == 0):
                    raise
                # a demo run as root in a checkout the postgres user cannot reach
                self.cluster = cluster = relocate_demo(self.settings.state_dir)
                self._log.info(
                    "The demo runs as root and {why}; its private cluster is in {dir} instead"
                    " (recorded in the state dir)",
                    why=str(e).split(". ")[0],
                    dir=cluster.directory,
                )
                await cluster.start_async(self.reactor)
        except (PostgresNotFound, ClusterDirectoryError) as e:
            raise StartupError(str(e)) from None
        except ClusterError as e:
            raise StartupError(
                f"the private PostgreSQL cluster in {cluster.directory} did not start:"
                f" {_gist(str(e))} (its log: {cluster.logfile})"
            ) from None
        try:
            dsn, applied = await prepare_database(self.reactor, cluster)
        except DatabaseUnavailable as e:
            raise StartupError(f"the private PostgreSQL cluster does not let us in: {e}") from None
        except SchemaTooNew as e:
            raise StartupError(str(e)) from None
        self._log.info(
            "Private PostgreSQL: Unix socket {socket} only (no TCP), peer authentication;"
            " the master works as role {role}",
            socket=cluster.socket_path,
            role=WORK_ROLE,
        )
        if applied:
            self._log.info("Applied schema migrations {applied}", applied=applied)
        return dsn

    async def _migrate(self, dsn: str) -> None:
        """Bring a database given by DSN to the current schema, or say who must."""
        assert self.db is not None
        version = await current_version(self.db)
        if version == LATEST:
            return
        try:
            applied = await migrate(self.db)
        except SchemaTooNew as e:
            raise StartupError(str(e)) from None
        except psycopg2.errors.InsufficientPrivilege as e:
            raise StartupError(
                f"the database is at schema version {version}, this buildmaster needs"
                f" {LATEST}, and role {parse_dsn(dsn).get('user', 'of --dsn')} may not"
                f" migrate it ({_gist(str(e))}): apply the migrations as the database's owner"
                " (python -m buildmaster.store.schema --dsn OWNER-DSN), then start again"
            ) from None
        self._log.info("Applied schema migrations {applied}", applied=applied)

    def stopService(self) -> defer.Deferred[None]:
        """Fires with ``None`` once everything has stopped, in the reverse order of the
        start: scans (their remote calls cut short), web server, librarian threads, database
        pool, then the private cluster. A start still under way is waited for first."""
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            await self._started
        except Exception:
            pass  # already logged
        if self.demo is not None:
            await self.demo.stop_queueing()
        if self._farm_metrics is not None and self._farm_metrics.running:
            await self._farm_metrics.stopService()
        if self._sampler is not None and self._sampler.running:
            await self._sampler.stopService()
        if self.master is not None and self.master.running:
            await self.master.stopService()
        if self.demo is not None:
            await self.demo.stop()
        if self._gc is not None and self._gc.running:
            await self._gc.stopService()
        if self.web is not None:
            await self.web.stopListening()
        if self._dropped_watch is not None:
            globalLogPublisher.removeObserver(self._dropped_watch)
        if self._threads is not None:
            # joining the threads blocks: do it from another thread
            await threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), self._threads.stop
            )
        if self.db is not None:
            await self.db.close()
        if self.api_db is not None:
            await self.api_db.close()
        if self.cluster is not None and self.cluster.port is not None:
            self._log.info("Stopping the private PostgreSQL cluster")
            await self.cluster.stop_async(self.reactor)
        self._log.info("buildmaster stopped")


class _Root(resource.Resource):
    """``/``: what this server offers; anything unknown is a plain 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        if path == b"" and not request.postpath:
            return cast(resource.IResource, self)
        return cast(resource.IResource, pages.notFound())

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            b"buildmaster\n\n"
            b"/builders, /builds, /queue: the web pages\n"
            b"/api/v1: the operator API (/api/v1/openapi.json describes it)\n"
            b"/librarian/<id>/<filename>: the librarian (files for builders, logs, results)\n"
            b"/metrics: Prometheus metrics\n"
            b"/healthz, /readyz: health checks\n"
        )


def web_root(librarian: Librarian | None = None) -> resource.Resource:
    """The master's web tree: the librarian under ``/librarian/`` (mount it later with
    :func:`mount_librarian` when the librarian needs the server's address first)."""
    root = _Root()
    if librarian is not None:
        mount_librarian(root, librarian)
    return root


def mount_librarian(root: resource.Resource, librarian: Librarian) -> None:
    root.putChild(b"librarian", cast(resource.IResource, librarian.resource()))


# -- start-up checks: each raises StartupError with what to fix ---------------------------


def _prepare_state_dir(state_dir: Path, separate_server_user: bool) -> None:
    """Create the state directory (mode 0700) if needed, and make sure it is a writable
    directory. When the master runs as root with its embedded cluster, the cluster runs as
    user postgres, which must pass through the state directory: a state directory made here
    is given to that user's group (mode 0710); one that exists already must let it through.
    """
    if state_dir.exists() and not state_dir.is_dir():
        raise StartupError(f"the state directory {state_dir} is not a directory: fix --state-dir")
    server_user = None
    if separate_server_user and os.geteuid() == 0:
        try:
            server_user = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        except KeyError:
            pass  # the cluster says what to do about it
    try:
        if not state_dir.exists():
            state_dir.mkdir(parents=True, mode=0o700)
            if server_user is not None:
                os.chown(state_dir, -1, server_user.pw_gid)
                os.chmod(state_dir, 0o710)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as e:
        raise StartupError(
            f"the state directory {state_dir} is not usable ({e.strerror}): give --state-dir a"
            " directory this user may write to"
        ) from None
    if server_user is not None:
        groups = os.getgrouplist(server_user.pw_name, server_user.pw_gid)
        if first_unsearchable(state_dir / "postgres", server_user.pw_uid, groups) is not None:
            # the directories above are the cluster's to report; this one is ours to explain
            blocked = first_unsearchable(state_dir, server_user.pw_uid, groups)
            if blocked is None:
                raise StartupError(
                    f"user {server_user.pw_name} (who runs the private PostgreSQL when the"
                    f" master runs as root) may not pass through the state directory"
                    f" {state_dir}: `chgrp {server_user.pw_name} {state_dir} && chmod g+x"
                    f" {state_dir}`, or run the master as an ordinary user"
                )


def _check_web_only(settings: ServiceSettings) -> None:
    """A web-only process serves an existing farm: its database, and nothing to simulate."""
    if settings.dsn is None:
        raise StartupError(
            "a web-only process serves the farm's database and needs its connection string"
            " (--dsn, as the scanning masters'): it starts no private cluster"
        )
    if settings.demo:
        raise StartupError("a web-only process runs no builders: --demo needs a scanning master")


def _shown_dsn(dsn: str) -> str:
    """``dsn`` without its password, for the log; an unparsable one is a StartupError."""
    try:
        fields = parse_dsn(dsn)
    except psycopg2.ProgrammingError as e:
        raise StartupError(f"--dsn is not a valid connection string: {_gist(str(e))}") from None
    if "password" in fields:
        fields["password"] = "..."
    return str(make_dsn(**fields)) if fields else "(libpq defaults)"


async def _connecting(reactor: Any, db: Database, dsn: str, timeout: float) -> None:
    """Connect ``db``, or say why not (within ``timeout`` seconds).

    A connection attempt in progress cannot be cancelled (libpq): on the deadline the
    start fails at once, and what the attempt comes to later is dropped.
    """
    where = _shown_dsn(dsn)
    outcome: defer.Deferred[None] = defer.Deferred()

    def settle(result: object) -> None:
        if outcome.called:
            return  # too late: the start failed already
        if isinstance(result, Failure):
            outcome.errback(result)
        else:
            outcome.callback(None)

    def too_late() -> None:
        if not outcome.called:
            outcome.errback(defer.TimeoutError())

    deadline = reactor.callLater(timeout, too_late)
    defer.Deferred.fromCoroutine(db.connect()).addBoth(settle)
    try:
        await outcome
    except DatabaseUnavailable as e:
        reason = _gist(str(e).removeprefix("database unavailable: "))
        raise StartupError(
            f"cannot connect to the database ({where}): {reason}; check --dsn, that the"
            " server runs, and that it lets this user in"
        ) from None
    except defer.TimeoutError:
        raise StartupError(
            f"the database ({where}) did not answer within {timeout:g} s: check --dsn and the"
            " network"
        ) from None
    finally:
        if deadline.active():
            deadline.cancel()


async def _listening(reactor: Any, description: str, site: server.Site) -> Any:
    """Listen on the strports ``description``, or say why not."""
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise StartupError(
            f"--port {description!r} is not a port number or an endpoint description: {e}"
        ) from None
    try:
        return await endpoint.listen(site)
    except error.CannotListenError as e:
        raise StartupError(
            f"cannot listen on {description} ({e.socketError}): choose another --port, or stop"
            " what listens there"
        ) from None
    except (OverflowError, ValueError, OSError) as e:
        reason = str(e).rstrip(".")
        raise StartupError(f"cannot listen on {description}: {reason}; fix --port") from None


def _in_daemon_thread(reactor: Any, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Call the blocking ``f(*args)`` in a thread of its own that the process does not wait
    for at exit (a thread stuck on a dead network mount must not keep it from exiting, as it
    would in a thread pool, which is joined); a Deferred of its result."""
    result: defer.Deferred[Any] = defer.Deferred()

    def call() -> None:
        try:
            value = f(*args)
        except BaseException:
            reactor.callFromThread(result.errback, Failure())
        else:
            reactor.callFromThread(result.callback, value)

    threading.Thread(target=call, name="startup-check", daemon=True).start()
    return result


async def _within(reactor: Any, d: defer.Deferred[Any], timeout: float) -> Any:
    """What ``d`` fires with, or ``defer.TimeoutError`` after ``timeout`` seconds (``d`` is
    left to fire later: a thread blocked on a dead mount cannot be interrupted)."""
    outcome: defer.Deferred[Any] = defer.Deferred()

    def settle(result: object) -> None:
        if outcome.called:
            return
        if isinstance(result, Failure):
            outcome.errback(result)
        else:
            outcome.callback(result)

    def too_late() -> None:
        if not outcome.called:
            outcome.errback(defer.TimeoutError())

    deadline = reactor.callLater(timeout, too_late)
    d.addBoth(settle)
    try:
        return await outcome
    finally:
        if deadline.active():
            deadline.cancel()


def _librarian_url(description: str, host: Any) -> str:
    """The librarian's URL from the address the web server got; refused when builders on
    other machines could not use it (a wildcard address) or there is none (not TCP)."""
    address = getattr(host, "host", None)
    if not isinstance(address, str):
        raise StartupError(
            f"--port {description} is not a TCP port: give builders the librarian's address"
            " with --librarian-url"
        )
    if address in ("0.0.0.0", "::", ""):
        raise StartupError(
            f"--port {description} listens on every address, and builders need a name for"
            f" this machine that they can reach: pass --librarian-url"
            f" http://<this machine's name>:{host.port}/librarian/"
        )
    shown = f"[{address}]" if ":" in address else address
    return f"http://{shown}:{host.port}/librarian/"


def _check_open_files(builders: int, database_connections: int) -> None:
    soft, hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
    problem = openfiles.shortfall(builders, database_connections, soft, hard)
    if problem is not None:
        raise StartupError(problem)


def _gist(text: str) -> str:
    """The line of an error's text worth showing: PostgreSQL's FATAL/ERROR line if there is
    one, else the first line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "FATAL:" in line or "ERROR:" in line:
            return line
    return lines[0] if lines else text
