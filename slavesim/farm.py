"""Many simulated builders in one process, each on its own port.

::

    farm = Farm(reactor, cache_dir=Path(...), build_time=2.0)
    bob = await farm.start_builder("bob", arch_tags=("i386",))
    sims = await farm.start_builders(count=10, arch_tags=("amd64",))
    ...
    await farm.stop()

Each :class:`SimBuilder` has its own state machine, file cache (``cache_dir/<name>/``),
fault switches, outcome rules and call history; what they share is the reactor, the
download agent and the farm's :class:`~slavesim.builder.Settings` and rules.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, RedirectAgent

from slavesim.builder import DEFAULT_VERSION, Settings, SimulatedBuilder
from slavesim.cache import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD,
    AgentFetcher,
    Fetcher,
    FileCache,
    download_agent,
)
from slavesim.faults import Faults
from slavesim.outcomes import OutcomeRule
from slavesim.web import BuilderSite, RecordedCall

__all__ = ["BuilderListing", "Farm", "SimBuilder"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_WILDCARDS = ("", "0.0.0.0", "::")


@frozen
class BuilderListing:
    """What a master needs to know about a builder: name, URL and architecture tags."""

    name: str
    url: str
    arch_tags: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "arch_tags": list(self.arch_tags)}


class SimBuilder:
    """One simulated builder of a :class:`Farm`, listening on its own port.

    - ``name``, ``arch_tags``, ``url`` (``http://host:port/``), ``port``;
    - ``state``: the :class:`~slavesim.builder.SimulatedBuilder` (its protocol state);
    - ``faults``: the :class:`~slavesim.faults.Faults` switches;
    - ``rules``: this builder's outcome rules (checked before the farm's);
    - ``history``: the last calls received, as ``(method, args)`` pairs (a bounded deque).
    """

    _log = Logger()

    def __init__(
        self,
        farm: Farm,
        name: str,
        arch_tags: Sequence[str],
        port: int,
        interface: str,
    ) -> None:
        self.name = name
        self.arch_tags = tuple(arch_tags)
        self.port = port
        self.interface = interface
        self.faults = Faults()
        self._rules: list[OutcomeRule] = []
        self.history: deque[RecordedCall] = deque(maxlen=farm.history_size)
        self.cache = FileCache(farm.cache_dir / name, farm.fetcher, farm.max_download)
        self.state = SimulatedBuilder(
            farm.clock,
            name,
            self.arch_tags,
            self.cache,
            faults=self.faults,
            settings=farm.settings,
            rules=self._rules,
            shared_rules=farm.shared_rules,
        )
        self.state.on_crash = self._crashed
        self._farm = farm
        self._reactor = farm.reactor
        self._site = BuilderSite(self.state, self.history, farm.reactor)
        self._listening: Any = None
        self._wanted_up = False
        self._lock = DeferredLock()
        self._restart_call: Any = None
        self.faults.watch_refuse(self._reconcile_in_background)

    @property
    def rules(self) -> list[OutcomeRule]:
        """This builder's outcome rules: edit in place or assign a new list."""
        return self._rules

    @rules.setter
    def rules(self, rules: Iterable[OutcomeRule]) -> None:
        self._rules[:] = list(rules)

    @property
    def url(self) -> str:
        """``http://<host>:<port>/``, the URL a master registers for this builder."""
        host = self._farm.url_host or (
            "127.0.0.1" if self.interface in _WILDCARDS else self.interface
        )
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def listening(self) -> bool:
        """Whether the builder accepts connections right now."""
        return self._listening is not None

    @property
    def fast_path(self) -> bool:
        """Whether plain requests are answered without twisted.web (the default; the
        answers are the same, see :mod:`slavesim.web`). ``False``: everything goes through
        twisted.web, from the next request on."""
        return self._site.fast_path

    @fast_path.setter
    def fast_path(self, value: bool) -> None:
        self._site.fast_path = value

    @property
    def fast_answered(self) -> int:
        """How many requests the fast path answered."""
        return self._site.fast_answered

    @property
    def open_connections(self) -> int:
        """How many HTTP connections to this builder are open."""
        return len(self._site.channels)

    @property
    def connections(self) -> frozenset[object]:
        """The HTTP connections open to this builder now (opaque: compare them)."""
        return frozenset(self._site.channels)

    def listing(self) -> BuilderListing:
        return BuilderListing(self.name, self.url, self.arch_tags)

    def start(self) -> Deferred[None]:
        """Listen (again, on the same port). Fires once listening.

        Fails with ``CannotListenError`` if the port is taken. While ``faults.refuse`` is
        set, the builder stays closed and listens when it is switched off.
        """
        self._wanted_up = True
        self._cancel_restart()
        return self._reconcile()

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every open connection; the builder's state is kept.

        Fires once the port is closed (connections are then refused) and the connections
        are gone.
        """
        self._wanted_up = False
        self._cancel_restart()
        return self._reconcile()

    def settled(self) -> Deferred[None]:
        """Fire once listening matches the switches (after flipping ``faults.refuse``)."""
        return self._lock.run(succeed, None)

    def _reconcile(self) -> Deferred[None]:
        return self._lock.run(lambda: Deferred.fromCoroutine(self._apply()))

    def _reconcile_in_background(self) -> None:
        self._reconcile().addErrback(self._failed_to_listen)

    def _failed_to_listen(self, failure: Failure) -> None:
        self._log.failure(
            "{builder}: cannot listen on port {port} again",
            failure,
            builder=self.name,
            port=self.port,
        )

    async def _apply(self) -> None:
        wanted = self._wanted_up and not self.faults.refuse
        if wanted and self._listening is None:
            self._listening = self._reactor.listenTCP(
                self.port, self._site, interface=self.interface
            )
            self.port = self._listening.getHost().port
        elif not wanted and self._listening is not None:
            port, self._listening = self._listening, None
            await maybeDeferred(port.stopListening)
            await self._site.disconnect_all()

    async def new_machine(self) -> None:
        """What a VM reset makes of the builder: a new machine (see
        :meth:`SimulatedBuilder.new_machine`) whose connections are gone."""
        self._log.info("{builder}: VM reset: a new machine", builder=self.name)
        self.state.new_machine()
        await self._site.disconnect_all()

    def _crashed(self) -> None:
        self._wanted_up = False
        self._reconcile_in_background()
        downtime = self.faults.crash_downtime
        if downtime is not None:
            self._restart_call = self._farm.clock.callLater(downtime, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        self._log.info("{builder}: back after a crash", builder=self.name)
        self._wanted_up = True
        self._reconcile_in_background()

    def _cancel_restart(self) -> None:
        if self._restart_call is not None:
            if self._restart_call.active():
                self._restart_call.cancel()
            self._restart_call = None

    async def _shutdown(self) -> None:
        self.state.shutdown()
        self.cache.cancel_downloads()
        await self.stop()


class _Control(LineOnlyReceiver):
    """One request to the farm's control port: ``reset <name>`` (see
    :mod:`slavesim.vmreset`), answered ``ok`` or ``error: <reason>``."""

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(self, reset: Callable[[str], Awaitable[None]]) -> None:
        self._reset = reset

    def lineReceived(self, line: bytes) -> None:
        command, _, name = line.decode("utf-8", "replace").strip().partition(" ")
        if command != "reset" or not name:
            self._answer(f"error: expected 'reset <builder>', got {line[:80]!r}")
            return
        d = Deferred.fromCoroutine(self._run(name))
        d.addCallbacks(lambda _: self._answer("ok"), lambda f: self._answer(f"error: {f.value}"))

    async def _run(self, name: str) -> None:
        await self._reset(name)

    def _answer(self, text: str) -> None:
        transport: Any = self.transport
        if transport is not None:
            self.sendLine(text.encode("utf-8"))
            transport.loseConnection()


class Farm:
    """A set of simulated builders sharing one reactor.

    :param reactor: provides ``IReactorTCP`` (listening, downloading) and ``IReactorTime``.
    :param cache_dir: each builder's file cache is ``cache_dir/<name>/``.
    :param build_time: seconds a build takes when no rule says otherwise.
    :param abort_time: seconds ABORTING lasts.
    :param rules: the farm's outcome rules (after each builder's own).
    :param clock: the time source of the state machines, latency and download timeouts
        (default: ``reactor``); a ``Clock`` lets integration tests drive time.
    :param version: ``builder_version`` in status (``None``: not reported).
    :param history_size: how many calls each builder remembers.
    :param max_download: the largest file ``ensurepresent`` downloads, in bytes.
    :param download_timeout: seconds before a download is given up.
    :param url_host: the host name put in builder URLs (default: the interface).
    :param fetcher: how files are downloaded (default: an ``Agent`` on ``reactor``).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        cache_dir: Path,
        *,
        build_time: float = 3.0,
        abort_time: float = 1.0,
        rules: Iterable[OutcomeRule] = (),
        clock: Any = None,
        version: str | None = DEFAULT_VERSION,
        history_size: int = 100,
        max_download: int = DEFAULT_MAX_DOWNLOAD,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        url_host: str | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: Any = reactor if clock is None else clock
        self.cache_dir = Path(cache_dir)
        self.settings = Settings(build_time=build_time, abort_time=abort_time, version=version)
        self.shared_rules: list[OutcomeRule] = list(rules)
        self.history_size = history_size
        self.max_download = max_download
        self.url_host = url_host
        self._pool: HTTPConnectionPool | None = None
        if fetcher is None:
            self._pool = HTTPConnectionPool(reactor, persistent=False)
            agent: Any = RedirectAgent(download_agent(reactor, self._pool))
            fetcher = AgentFetcher(agent, self.clock, download_timeout)
        self.fetcher = fetcher
        self.builders: dict[str, SimBuilder] = {}
        self._control: Any = None

    @property
    def rules(self) -> list[OutcomeRule]:
        """The farm's outcome rules: edit in place or assign a new list."""
        return self.shared_rules

    @rules.setter
    def rules(self, rules: Iterable[OutcomeRule]) -> None:
        self.shared_rules[:] = list(rules)

    @property
    def build_time(self) -> float:
        """Seconds a build takes when no rule says otherwise (applies to the next builds)."""
        return self.settings.build_time

    @build_time.setter
    def build_time(self, seconds: float) -> None:
        self.settings.build_time = seconds

    def start_builder(
        self,
        name: str,
        arch_tags: Sequence[str] = ("amd64",),
        port: int = 0,
        interface: str = "127.0.0.1",
    ) -> Deferred[SimBuilder]:
        """Create builder ``name`` and make it listen on ``port`` (0: any free port).

        Fires with the :class:`SimBuilder`; fails with ``ValueError`` for a bad or taken
        name, ``CannotListenError`` when the port is taken.
        """
        return Deferred.fromCoroutine(self._start_builder(name, arch_tags, port, interface))

    async def _start_builder(
        self, name: str, arch_tags: Sequence[str], port: int, interface: str
    ) -> SimBuilder:
        if not _NAME.match(name):
            raise ValueError(f"bad builder name {name!r}: letters, digits, '.', '_', '-'")
        if name in self.builders:
            raise ValueError(f"there already is a builder called {name!r}")
        builder = SimBuilder(self, name, arch_tags, port, interface)
        self.builders[name] = builder
        try:
            await builder.start()
        except BaseException:
            del self.builders[name]
            raise
        self._log.info(
            "Builder {name} listening on {url} ({arch_tags})",
            name=name,
            url=builder.url,
            arch_tags=",".join(builder.arch_tags),
        )
        return builder

    def start_builders(
        self,
        count: int,
        arch_tags: Sequence[str] = ("amd64",),
        name_prefix: str = "sim",
        port: int = 0,
        interface: str = "127.0.0.1",
        spread_arch: bool = False,
    ) -> Deferred[list[SimBuilder]]:
        """Start ``count`` builders named ``<prefix>000``, ``<prefix>001``, ...

        With ``port`` 0 each listens on any free port; otherwise builder ``i`` listens on
        ``port + i``. Every builder gets all ``arch_tags``, or with ``spread_arch`` builder
        ``i`` gets only ``arch_tags[i % len(arch_tags)]``. Fires with the builders; on
        failure the builders already started by this call are stopped again.
        """
        return Deferred.fromCoroutine(
            self._start_builders(count, arch_tags, name_prefix, port, interface, spread_arch)
        )

    async def _start_builders(
        self,
        count: int,
        arch_tags: Sequence[str],
        name_prefix: str,
        port: int,
        interface: str,
        spread_arch: bool,
    ) -> list[SimBuilder]:
        if count < 0:
            raise ValueError("count must be >= 0")
        width = max(3, len(str(count - 1)))
        started: list[SimBuilder] = []
        try:
            for i in range(count):
                tags = (arch_tags[i % len(arch_tags)],) if spread_arch else tuple(arch_tags)
                started.append(
                    await self.start_builder(
                        f"{name_prefix}{i:0{width}d}", tags, port + i if port else 0, interface
                    )
                )
        except BaseException:
            for builder in started:
                await builder._shutdown()
                del self.builders[builder.name]
            raise
        return started

    def vm_reset_command(self) -> str:
        """A VM reset command for a master (``--vm-resume-command``): it makes a new
        machine of the builder named by ``%(buildd_name)s`` (see :mod:`slavesim.vmreset`)
        and exits 0 once that is done. The farm listens for it on 127.0.0.1 from the first
        call on."""
        if self._control is None:
            factory = Factory.forProtocol(partial(_Control, self._reset_vm))
            factory.noisy = False
            self._control = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        port = self._control.getHost().port
        script = shlex.quote(str(Path(__file__).with_name("vmreset.py")))
        return f"{shlex.quote(sys.executable)} {script} 127.0.0.1:{port} %(buildd_name)s"

    async def _reset_vm(self, name: str) -> None:
        builder = self.builders.get(name)
        if builder is None:
            raise KeyError(f"no builder called {name!r}")
        await builder.new_machine()

    def listings(self) -> list[BuilderListing]:
        """Every builder's name, URL and architecture tags."""
        return [b.listing() for b in self.builders.values()]

    def stop(self) -> Deferred[None]:
        """Stop every builder: no listening port, connection, download or timer is left.

        Fires once all of it is gone.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._control is not None:
            control, self._control = self._control, None
            await maybeDeferred(control.stopListening)
        await gatherResults(
            [Deferred.fromCoroutine(b._shutdown()) for b in self.builders.values()],
            consumeErrors=True,
        )
        if self._pool is not None:
            await self._pool.closeCachedConnections()
