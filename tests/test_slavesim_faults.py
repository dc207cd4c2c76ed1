"""Fault injection over real sockets: each switch flipped at run time, as a master sees it."""

from __future__ import annotations

import hashlib
import io
import xml.parsers.expat
import xmlrpc.client
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.xmlrpc import Proxy

from slavesim import Farm, Outcome, OutcomeRule, SimBuilder
from slavesim.testing import (
    leftover_delayed_calls,
    outcome_of,
    read_body,
    wait_for,
    wait_for_no_tcp,
)

ARGS = {"distribution": "ubuntu", "series": "hoary", "suite": "hoary", "ogrecomponent": "main"}
STATUS_BODY = xmlrpc.client.dumps((), "status").encode()


class Sim:
    def __init__(self, reactor: Any, farm: Farm, bob: SimBuilder, clock: Clock) -> None:
        self.reactor = reactor
        self.farm = farm
        self.bob = bob
        self.clock = clock
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)

    def proxy(self) -> Proxy:
        return Proxy((self.bob.url + "rpc").encode(), allowNone=True)

    async def call(self, method: str, *args: object) -> Any:
        return await self.proxy().callRemote(method, *args)

    def post(self, body: bytes = STATUS_BODY, path: str = "rpc") -> Any:
        """POST over a persistent HTTP/1.1 connection (unlike Proxy's HTTP/1.0)."""
        producer: Any = FileBodyProducer(io.BytesIO(body))
        return self.agent.request(
            b"POST",
            (self.bob.url + path).encode(),
            Headers({b"content-type": [b"text/xml"]}),
            producer,
        )

    async def start_build(self, build_id: str = "PACKAGEBUILD-7") -> Any:
        cache = self.bob.cache
        chroot, dsc = cache.store(b"chroot"), cache.store(b"dsc")
        return await self.call(
            "build", build_id, "binarypackage", chroot, {"hello_1.0-1.dsc": dsc}, ARGS
        )


@pytest_twisted.async_yield_fixture
async def sim(reactor: Any, tmp_path: Path) -> AsyncIterator[Sim]:
    before = set(reactor.getDelayedCalls())
    clock = Clock()
    farm = Farm(reactor, tmp_path / "caches", clock=clock, build_time=10, abort_time=1)
    bob = await farm.start_builder("bob")
    fixture = Sim(reactor, farm, bob, clock)
    yield fixture
    await farm.stop()
    await fixture.pool.closeCachedConnections()
    await wait_for_no_tcp(reactor)
    assert clock.getDelayedCalls() == []
    assert leftover_delayed_calls(reactor, before) == []


@pytest_twisted.ensureDeferred
async def test_refuse_closes_the_port_and_drops_connections(sim: Sim) -> None:
    response = await sim.post()
    await read_body(response)
    assert sim.bob.open_connections == 1, "the agent keeps its HTTP/1.1 connection"
    port = sim.bob.port
    sim.bob.faults.refuse = True
    await sim.bob.settled()
    assert sim.bob.open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        await sim.call("status")
    sim.bob.faults.refuse = False
    await sim.bob.settled()
    assert sim.bob.port == port
    assert (await sim.call("status"))["builder_status"] == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_stop_and_start_on_the_same_port_keeps_the_state(sim: Sim) -> None:
    await sim.start_build()
    port = sim.bob.port
    await sim.bob.stop()
    assert not sim.bob.listening
    with pytest.raises(ConnectionRefusedError):
        await sim.call("status")
    await sim.bob.start()
    assert sim.bob.port == port
    status = await sim.call("status")
    assert (status["builder_status"], status["build_id"]) == (
        "BuilderStatus.BUILDING",
        "PACKAGEBUILD-7",
    )


@pytest_twisted.ensureDeferred
async def test_hang_reads_and_never_answers(sim: Sim) -> None:
    sim.bob.faults.hang = True
    answer = sim.post()
    log = sim.agent.request(b"GET", (sim.bob.url + "filecache/buildlog").encode())
    answered, logged = outcome_of(answer), outcome_of(log)
    await wait_for(sim.reactor, lambda: list(sim.bob.history) and sim.bob.open_connections == 2)
    await deferLater(sim.reactor, 0.05, lambda: None)
    assert answered == [] and logged == []
    assert [call.method for call in sim.bob.history] == ["status"]
    sim.bob.faults.hang = False
    assert (await sim.call("status"))["builder_status"] == "BuilderStatus.IDLE"
    assert answered == [], "a hung request stays hung"
    await sim.bob.stop()
    for request in (answer, log):
        with pytest.raises(ResponseFailed):
            await request


@pytest_twisted.ensureDeferred
async def test_garbage_xml_after_carrying_out_the_call(sim: Sim) -> None:
    sim.bob.faults.garbage = "xml"
    with pytest.raises(xml.parsers.expat.ExpatError):
        await sim.start_build()
    sim.bob.faults.garbage = None
    assert (await sim.call("status"))["builder_status"] == "BuilderStatus.BUILDING"


@pytest_twisted.ensureDeferred
async def test_garbage_types(sim: Sim) -> None:
    sim.bob.faults.garbage = "types"
    assert await sim.call("status") == {"builder_status": 1, "build_id": 2, "logtail": 3}
    assert await sim.call("info") == 42
    assert await sim.call("no_such_method") == 42


@pytest_twisted.ensureDeferred
async def test_garbage_huge(sim: Sim) -> None:
    sim.bob.faults.garbage = "huge"
    sim.bob.faults.huge_size = 3 * 1024 * 1024 + 1
    response = await sim.post()
    assert response.length == 3 * 1024 * 1024 + 1
    body = await read_body(response)
    assert len(body) == response.length
    assert body.startswith(b"<?xml") and body.endswith(b"</methodResponse>\n")


def test_garbage_must_be_a_known_kind() -> None:
    from slavesim import Faults

    with pytest.raises(ValueError, match="garbage must be"):
        Faults().garbage = "nonsense"


@pytest_twisted.ensureDeferred
async def test_latency_delays_every_answer_on_the_clock(sim: Sim) -> None:
    sim.bob.faults.latency = 5.0
    answer = sim.post()
    answered = outcome_of(answer)
    await wait_for(sim.reactor, lambda: sim.bob.history)
    await deferLater(sim.reactor, 0.02, lambda: None)
    assert answered == []
    sim.clock.advance(4.9)
    await deferLater(sim.reactor, 0.02, lambda: None)
    assert answered == []
    sim.clock.advance(0.1)
    response = await answer
    status: Any = xmlrpc.client.loads(await read_body(response))[0][0]
    assert status["builder_status"] == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_withheld_answer_acts_at_once_and_answers_late(sim: Sim) -> None:
    """The builder starts the build, but its reply is lost for a while (only for ``build``)."""
    sim.bob.faults.withhold_answer = {"build": 30.0}
    answer = defer.ensureDeferred(sim.start_build())
    answered = outcome_of(answer)
    await wait_for(
        sim.reactor, lambda: sim.bob.state.status()["builder_status"] == "BuilderStatus.BUILDING"
    )
    status = await sim.call("status")  # other calls are answered as usual meanwhile
    assert (status["builder_status"], status["build_id"]) == (
        "BuilderStatus.BUILDING",
        "PACKAGEBUILD-7",
    )
    sim.clock.advance(29.9)
    await deferLater(sim.reactor, 0.02, lambda: None)
    assert answered == []
    sim.clock.advance(0.1)
    assert await answer == ["BuilderStatus.BUILDING", "PACKAGEBUILD-7"]


@pytest_twisted.ensureDeferred
async def test_stop_with_delayed_answers_leaves_nothing_behind(sim: Sim) -> None:
    sim.bob.faults.latency = 60
    answer = sim.post()
    await wait_for(sim.reactor, lambda: sim.bob.history)
    await sim.farm.stop()
    with pytest.raises(ResponseFailed):
        await answer
    assert sim.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_forget_build_and_wrong_cookie(sim: Sim) -> None:
    await sim.start_build()
    sim.bob.faults.wrong_cookie = "PACKAGEBUILD-999"
    assert (await sim.call("status"))["build_id"] == "PACKAGEBUILD-999"
    sim.bob.faults.forget_build = True
    assert await sim.call("status") == {
        "builder_status": "BuilderStatus.IDLE",
        "builder_version": "slavesim-0.1",
    }


@pytest_twisted.ensureDeferred
async def test_crash_mid_build_then_restart(sim: Sim) -> None:
    sim.bob.faults.crash_mid_build = True
    await sim.start_build()
    sim.clock.advance(5)
    await sim.bob.settled()
    assert not sim.bob.listening
    with pytest.raises(ConnectionRefusedError):
        await sim.call("status")
    await sim.bob.start()
    assert await sim.call("status") == {
        "builder_status": "BuilderStatus.IDLE",
        "builder_version": "slavesim-0.1",
    }


@pytest_twisted.ensureDeferred
async def test_crash_with_downtime_comes_back_by_itself(sim: Sim) -> None:
    sim.bob.faults.crash_mid_build = True
    sim.bob.faults.crash_downtime = 30
    await sim.start_build()
    sim.clock.advance(5)
    await sim.bob.settled()
    assert not sim.bob.listening
    sim.clock.advance(30)
    await sim.bob.settled()
    assert (await sim.call("status"))["builder_status"] == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_history_records_what_the_master_sent(sim: Sim) -> None:
    await sim.call("status")
    await sim.start_build("PACKAGEBUILD-77")
    method, args = sim.bob.history[-1]
    assert method == "build"
    assert args[0] == "PACKAGEBUILD-77" and args[4] == ARGS
    assert [call.method for call in sim.bob.history] == ["status", "build"]


@pytest_twisted.ensureDeferred
async def test_faults_are_per_builder(sim: Sim) -> None:
    alice = await sim.farm.start_builder("alice")
    sim.bob.faults.garbage = "types"
    proxy = Proxy((alice.url + "rpc").encode())
    assert (await proxy.callRemote("status"))["builder_status"] == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_rules_per_builder_over_the_wire(sim: Sim) -> None:
    sim.bob.rules = [OutcomeRule(Outcome.DEPFAIL, package="hel*", dependencies="libx")]
    sim.farm.rules = [OutcomeRule(Outcome.GIVENBACK)]
    await sim.start_build()
    sim.clock.advance(10)
    status = await sim.call("status")
    assert (status["build_status"], status["dependencies"]) == ("BuildStatus.DEPFAIL", "libx")
    cache = sim.bob.cache
    assert hashlib.sha1(b"chroot").hexdigest() in cache.files()


@pytest_twisted.ensureDeferred
async def test_hostile_results(sim: Sim) -> None:
    from slavesim.artifacts import BAD_SHA1

    await sim.start_build()
    sim.clock.advance(11)  # the build ends OK
    honest = (await sim.call("status"))["filemap"]
    assert len(honest) == 2

    sim.bob.faults.hostile_results = "traversal"
    filemap = (await sim.call("status"))["filemap"]
    assert filemap["../../../etc/passwd"] in honest.values()

    sim.bob.faults.hostile_results = "many_files"
    assert len((await sim.call("status"))["filemap"]) == 1_500

    sim.bob.faults.hostile_results = "bad_sha1"
    assert (await sim.call("status"))["filemap"]["evil_1.0_all.deb"] == BAD_SHA1
    bad: Any = await sim.agent.request(b"GET", f"{sim.bob.url}filecache/{BAD_SHA1}".encode())
    body = await read_body(bad)
    assert hashlib.sha1(body).hexdigest() != BAD_SHA1

    # an endless result file: read a few megabytes of it, then hang up
    sim.bob.faults.hostile_results = "endless_file"
    sha1 = next(iter(honest.values()))
    endless: Any = await sim.agent.request(b"GET", f"{sim.bob.url}filecache/{sha1}".encode())
    assert endless.code == 200 and endless.length is UNKNOWN_LENGTH  # no end announced
    done: list[Any] = []
    endless.deliverBody(_Counter(done))
    await wait_for(sim.reactor, lambda: done and done[0] > 4 * 1024 * 1024)
    done.append(True)

    sim.bob.faults.hostile_results = None
    assert (await sim.call("status"))["filemap"] == honest


class _Counter:
    """Counts the bytes of a body and hangs up once told to."""

    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.sink.append(0)

    def dataReceived(self, data: bytes) -> None:
        self.sink[0] += len(data)
        if len(self.sink) > 1:
            self.transport.stopProducing()

    def connectionLost(self, reason: Any) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_a_builder_that_downloads_answers_nothing_else_meanwhile(
    reactor: Any, tmp_path: Path
) -> None:
    """``blocking_downloads``: while ``ensurepresent`` downloads, every other call waits
    for the download to end (the real daemon downloads synchronously)."""
    from slavesim.testing import MemoryFetcher

    data = b"a big chroot"
    sha1 = hashlib.sha1(data).hexdigest()
    fetcher = MemoryFetcher(files={"http://librarian/chroot": data}, paused=True)
    farm = Farm(reactor, tmp_path / "caches", fetcher=fetcher)
    try:
        bob = await farm.start_builder("bob")
        bob.faults.blocking_downloads = True

        def proxy() -> Proxy:
            return Proxy((bob.url + "rpc").encode(), allowNone=True)

        ensured = outcome_of(
            proxy().callRemote("ensurepresent", sha1, "http://librarian/chroot", None, None)
        )
        await wait_for(reactor, lambda: bool(fetcher.requests))
        status = outcome_of(proxy().callRemote("status"))
        echo = outcome_of(proxy().callRemote("echo", "still there?"))
        await deferLater(reactor, 0.2, lambda: None)
        assert status == [] and echo == [] and ensured == []
        fetcher.release()
        await wait_for(reactor, lambda: bool(status and echo and ensured))
        assert ensured == [[True, "Download"]]
        assert status[0]["builder_status"] == "BuilderStatus.IDLE"
        assert echo == [["still there?"]]
        # once the download is over, calls are answered at once again
        assert (await proxy().callRemote("status"))["builder_status"] == "BuilderStatus.IDLE"
    finally:
        await farm.stop()
