"""Helpers for tests (ours and embedders'): a master wired to real parts.

:class:`FarmHarness` puts together, in the caller's reactor, everything a master needs
except the database: a librarian in a directory with its HTTP resource listening on
127.0.0.1 (port 0), a farm of simulated builders (slavesim), and a :class:`BuilddMaster`
(not started: call its API directly, or ``startService`` it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web import server

from buildmaster.config import MasterConfig
from buildmaster.librarian import Librarian
from buildmaster.librarian.guard import guarded_request_factory
from buildmaster.master import BuilddMaster
from buildmaster.metrics import Metrics
from buildmaster.model import LibraryFile
from buildmaster.service import mount_librarian, web_root
from buildmaster.store import Store
from buildmaster.web import bearer_verifier, mount_operator_web
from buildmaster.web.api import ApiContext, ApiLimits

__all__ = ["FarmHarness", "wait_for"]


class FarmHarness:
    """See the module docstring. The master's web server also serves the operator API
    (``base_url + "/api/v1"``), ``/metrics`` and the health checks."""

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
    async def start(
        cls,
        reactor: Any,
        store: Store,
        directory: Path,
        config: MasterConfig | None = None,
        build_time: float = 1.0,
        farm_clock: Any = None,
        api_limits: ApiLimits | None = None,
    ) -> FarmHarness:
        """Start the librarian's web server and an empty slavesim farm."""
        from slavesim import Farm

        self = cls(reactor, store, directory)
        secret = Librarian.load_or_create_secret(directory)
        # the public URL is only known once listening: bind first, then build the librarian
        site = server.Site(
            self._site_root,
            requestFactory=guarded_request_factory(
                lambda: getattr(self, "librarian", None),
                verify_bearer=bearer_verifier(lambda: store),
            ),
            parsePOSTFormSubmission=False,
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
        self.master = BuilddMaster(reactor, store, self.librarian, config, self.metrics)
        mount_operator_web(
            self._site_root,
            ApiContext(
                store=store,
                librarian=self.librarian,
                clock=reactor,
                operations=self.master,
                farm=self.master,
                metrics=self.metrics,
                limits=api_limits or ApiLimits(),
            ),
            max_cycle_age=max(3 * config.scan_interval, 30.0),
        )
        return self

    async def add_file(
        self,
        name: str,
        content: bytes,
        content_type: str = "application/octet-stream",
        restricted: bool = False,
    ) -> LibraryFile:
        """Store ``content`` in the librarian."""
        alias = await self.librarian.addFile(
            name, len(content), io.BytesIO(content), content_type, restricted
        )
        return await self.librarian.get(alias)

    async def start_builder(self, name: str, arch: str = "i386", port: int = 0) -> Any:
        """A simulated builder listening on 127.0.0.1."""
        return await self.farm.start_builder(name, (arch,), port=port)

    async def stop(self) -> None:
        if self.master.running:
            await self.master.stopService()
        else:
            self.master.http.abort_all()
        await self.farm.stop()
        if self._port is not None:
            await self._port.stopListening()


async def wait_for(
    reactor: Any, condition: Callable[[], Any], timeout: float = 20.0, what: str = ""
) -> None:
    """Poll ``condition`` (sync or async) until true; fail after ``timeout`` seconds."""
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
