"""The whole master as one service, started and stopped in a fixed order.

Start: the database (the embedded private cluster when no DSN is given; migrations), the web
server (with the librarian under ``/librarian/``), the librarian's garbage collector, the
scanning master, and the demo (if asked). Stop: the same, backwards: scanning stops before
the web server, and the database (and its private cluster) closes last. Twisted's
``MultiService`` stops its children all at once, so the order is written out here.

Embeddable: ``BuildmasterService(reactor, settings)`` can live in any Twisted application;
``tap.py`` builds one for ``twistd buildmaster``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web import pages, resource, server

from buildmaster.config import MasterConfig
from buildmaster.librarian import Librarian
from buildmaster.librarian.guard import guarded_request_factory
from buildmaster.master import BuilddMaster
from buildmaster.metrics import Metrics
from buildmaster.store import Database, Store
from buildmaster.store.cluster import PostgresCluster
from buildmaster.store.schema import migrate
from buildmaster.web import bearer_verifier, mount_operator_web
from buildmaster.web.api import ApiContext
from buildmaster.web.metrics import FarmMetrics

__all__ = ["ServiceSettings", "BuildmasterService", "web_root", "mount_librarian"]

EMBEDDED_DATABASE = "buildmaster"


@attrs.frozen
class ServiceSettings:
    state_dir: Path
    #: libpq connection string; ``None``: the private cluster in ``state_dir/postgres``
    dsn: str | None = None
    #: strports description of the web server (librarian now, more later)
    port: str = "tcp:8000:interface=127.0.0.1"
    #: where builders reach the librarian; default ``http://<interface>:<port>/librarian/``
    librarian_url: str | None = None
    master: MasterConfig = MasterConfig()
    pool_size: int = 8
    #: database connections of the operator API's own (its reads never wait in front of
    #: the master's statements, and at most this many run in PostgreSQL at once)
    api_pool_size: int = 2
    gc_interval: float = 3600.0
    #: log every request to the web server (builders fetch a file or two per build)
    access_log: bool = False
    demo: bool = False
    demo_builders: int = 12
    demo_queue_interval: float = 2.0
    #: seconds between readings of the farm's state for /metrics
    metrics_interval: float = 15.0


class BuildmasterService(service.Service):
    """Database, web server, librarian, master (and demo), in order.

    :param reactor: the reactor everything runs on (passed all the way down).
    :param on_fatal: called with the error when starting fails (``twistd`` stops the
        reactor); by default the error is only logged.
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
        self.master: BuilddMaster | None = None
        self.web: Any = None
        self.demo: Any = None
        self._gc: service.Service | None = None
        self.metrics = Metrics()
        self._farm_metrics: FarmMetrics | None = None
        self._threads: ThreadPool | None = None
        self._started: defer.Deferred[None] = defer.succeed(None)

    def startService(self) -> None:
        super().startService()
        self._started = defer.Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        self._log.failure("buildmaster could not start", failure)
        if self.on_fatal is not None:
            self.on_fatal(failure.value)

    async def _start(self) -> None:
        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        dsn = settings.dsn
        if dsn is None:
            self.cluster = PostgresCluster(directory=settings.state_dir / "postgres", fsync=True)
            self._log.info(
                "Starting the private PostgreSQL cluster in {dir}", dir=self.cluster.directory
            )
            await self.cluster.start_async(self.reactor)
            await _ensure_database(self.reactor, self.cluster.dsn("postgres"), EMBEDDED_DATABASE)
            dsn = self.cluster.dsn(EMBEDDED_DATABASE)
        self.db = Database(self.reactor, dsn, size=settings.pool_size)
        await self.db.connect()
        applied = await migrate(self.db)
        if applied:
            self._log.info("Applied schema migrations {applied}", applied=applied)
        self.store = Store(self.db)
        self.api_db = Database(self.reactor, dsn, size=settings.api_pool_size)
        await self.api_db.connect()
        self.api_store = Store(self.api_db)

        # uploads are raw bodies: twisted.web must neither parse them as forms nor keep
        # bodies that nobody may upload
        site = server.Site(
            web_root(),
            requestFactory=guarded_request_factory(
                lambda: self.librarian, verify_bearer=bearer_verifier(lambda: self.api_store)
            ),
            parsePOSTFormSubmission=False,
        )
        if not settings.access_log:
            site.log = lambda request: None  # type: ignore[method-assign]
        endpoint = endpoints.serverFromString(self.reactor, settings.port)
        self.web = await endpoint.listen(site)
        host = self.web.getHost()
        public = settings.librarian_url or f"http://{_url_host(host.host)}:{host.port}/librarian/"
        secret = Librarian.load_or_create_secret(settings.state_dir)
        # the librarian's disk work gets threads of its own: the reactor's pool also resolves
        # builder host names, and must not wait behind 20 chroot downloads
        self._threads = ThreadPool(minthreads=2, maxthreads=32, name="librarian")
        self._threads.start()
        self.librarian = Librarian(
            self.reactor,
            self.db,
            settings.state_dir / "librarian",
            public,
            secret,
            threadpool=self._threads,
        )
        mount_librarian(site.resource, self.librarian)
        self._log.info(
            "Web server on {host}:{port}; librarian at {url}",
            host=host.host,
            port=host.port,
            url=public,
        )
        self._gc = self.librarian.garbage_collector(settings.gc_interval)
        self._gc.startService()

        self.master = BuilddMaster(
            self.reactor, self.store, self.librarian, settings.master, self.metrics
        )
        mount_operator_web(
            site.resource,
            ApiContext(
                store=self.api_store,
                librarian=self.librarian,
                clock=self.reactor,
                operations=self.master,
                farm=self.master,
                metrics=self.metrics,
            ),
            max_cycle_age=max(3 * settings.master.scan_interval, 30.0),
        )
        if settings.demo:
            from buildmaster.demo import Demo

            self.demo = Demo(self.reactor, self.store, self.librarian, self.master, settings)
            await self.demo.prepare()
        self.master.startService()
        await self.master._started
        self._farm_metrics = FarmMetrics(
            self.reactor, self.store, self.metrics, settings.metrics_interval
        )
        self._farm_metrics.startService()
        if self.demo is not None:
            self.demo.start_queueing()
        self._log.info("buildmaster is running")

    def stopService(self) -> defer.Deferred[None]:
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
        if self.master is not None and self.master.running:
            await self.master.stopService()
        if self.demo is not None:
            await self.demo.stop()
        if self._gc is not None and self._gc.running:
            await self._gc.stopService()
        if self.web is not None:
            await self.web.stopListening()
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


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _ensure_database(reactor: Any, admin_dsn: str, name: str) -> None:
    admin = Database(reactor, admin_dsn, size=1)
    await admin.connect()
    try:
        rows = await admin.query("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if not rows:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
