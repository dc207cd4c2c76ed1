"""Helpers for tests (ours and embedders'): a master wired to real parts.

:class:`FarmHarness` puts together, in the caller's reactor, everything a master needs
except the database: a librarian in a directory with its HTTP resource listening on
127.0.0.1 (port 0), a farm of simulated builders (slavesim), and a :class:`BuilddMaster`
(not started: call its API directly, or ``startService`` it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from twisted.web import resource, server

from buildmaster.config import MasterConfig
from buildmaster.librarian import Librarian
from buildmaster.master import BuilddMaster
from buildmaster.model import LibraryFile
from buildmaster.store import Store

__all__ = ["FarmHarness", "web_root"]


def web_root(librarian: Librarian) -> resource.Resource:
    """The master's web tree: the librarian under ``/librarian/``."""
    root = resource.Resource()
    root.putChild(b"librarian", librarian.resource())
    return root


class FarmHarness:
    def __init__(self, reactor: Any, store: Store, directory: Path) -> None:
        self.reactor = reactor
        self.store = store
        self.directory = directory
        self.librarian: Librarian
        self.master: BuilddMaster
        self.farm: Any
        self._port: Any = None

    @classmethod
    async def start(
        cls,
        reactor: Any,
        store: Store,
        directory: Path,
        config: MasterConfig | None = None,
        build_time: float = 1.0,
        farm_clock: Any = None,
    ) -> FarmHarness:
        """Start the librarian's web server and an empty slavesim farm."""
        from slavesim import Farm

        self = cls(reactor, store, directory)
        secret = Librarian.load_or_create_secret(directory)
        # the public URL is only known once listening: bind first, then build the librarian
        self._site_root = resource.Resource()
        self._port = reactor.listenTCP(0, server.Site(self._site_root), interface="127.0.0.1")
        public_url = f"http://127.0.0.1:{self._port.getHost().port}/librarian/"
        self.librarian = Librarian(reactor, store.db, directory / "librarian", public_url, secret)
        self._site_root.putChild(b"librarian", self.librarian.resource())
        self.farm = Farm(reactor, directory / "slavesim", build_time=build_time, clock=farm_clock)
        self.master = BuilddMaster(reactor, store, self.librarian, config or MasterConfig())
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
