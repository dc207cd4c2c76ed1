"""Helpers for tests (ours and embedders'): a master wired to real parts.

:class:`FarmHarness` puts together, in the caller's reactor, everything a master needs
except the database: a librarian in a directory with its HTTP resource listening on
127.0.0.1 (port 0), a farm of simulated builders (slavesim), and a :class:`BuilddMaster`
(not started: call its API directly, or ``startService`` it).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
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

__all__ = ["ClockedReactor", "FarmHarness", "master_process", "wait_for"]

_ROOT = Path(__file__).resolve().parent.parent


def master_process(dsn: str, state: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``twistd -n buildmaster`` in a process of its own (this source tree first on its
    path), on the database ``dsn``, logging to ``log``, with a web server on any free
    port, a 0.3 s scan interval and a 3 s call timeout, and ``args`` besides."""
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
            "3",
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
        master_clock: task.Clock | None = None,
        api_limits: ApiLimits | None = None,
    ) -> FarmHarness:
        """Start the librarian's web server and an empty slavesim farm.

        :param farm_clock: the simulated builders' clock (default: the reactor).
        :param master_clock: the master's clock (default: the reactor): with a
            :class:`~twisted.internet.task.Clock`, the master runs on a
            :class:`ClockedReactor`.
        """
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
        master_reactor = reactor if master_clock is None else ClockedReactor(reactor, master_clock)
        self.master = BuilddMaster(master_reactor, store, self.librarian, config, self.metrics)
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
