"""slavesim's fast path: plain requests answered by the connection itself, byte for byte
what twisted.web answers, in order, however the bytes arrive; everything else handed over.

Real sockets on 127.0.0.1; the client is a raw TCP connection, so the tests see every byte.
"""

from __future__ import annotations

import re
import xmlrpc.client
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_slavesim_conformance import ARGS, CHROOT, DSC, sha1_of
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from slavesim import Farm, SimBuilder
from slavesim.testing import MemoryFetcher, wait_for, wait_for_no_tcp


def rpc(method: str, *args: Any) -> bytes:
    body = xmlrpc.client.dumps(args, method, allow_none=True).encode()
    return (
        b"POST /rpc HTTP/1.1\r\nHost: builder\r\nContent-Type: text/xml\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: builder\r\n\r\n".encode()


class Raw(Protocol):
    """A client that sends bytes as told and splits what comes back into responses."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)

    def send(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def close(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def responses(self) -> list[tuple[bytes, bytes]]:
        """The complete responses so far: ``(head without the Date line, body)``."""
        found: list[tuple[bytes, bytes]] = []
        rest = self.data
        while (end := rest.find(b"\r\n\r\n")) >= 0:
            head = rest[:end]
            rest = rest[end + 4 :]
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            if length is not None:
                size = int(length.group(1))
                if len(rest) < size:
                    break
                body, rest = rest[:size], rest[size:]
            elif b"Transfer-Encoding: chunked" not in head:
                body = b""  # an answer to HEAD
            else:
                body = b""
                while (eol := rest.find(b"\r\n")) >= 0:
                    size = int(rest[:eol], 16)
                    if len(rest) < eol + 2 + size + 2:
                        return found
                    body += rest[eol + 2 : eol + 2 + size]
                    rest = rest[eol + 2 + size + 2 :]
                    if size == 0:
                        break
                else:
                    break
            found.append((re.sub(rb"\r\nDate: [^\r]*", b"", head), body))
        return found


class Builders:
    """Two identical builders named bob, each on its own farm and clock: one answers
    through the fast path, the other only through twisted.web."""

    def __init__(self, reactor: Any, fetcher: MemoryFetcher) -> None:
        self.reactor = reactor
        self.fetcher = fetcher
        self.farms: list[Farm] = []
        self.clocks: list[Clock] = []
        self.sims: list[SimBuilder] = []
        self.clients: list[Raw] = []

    async def start(self, root: Path) -> None:
        for kind in ("fast", "general"):
            clock = Clock()
            farm = Farm(self.reactor, root / kind, clock=clock, build_time=10, fetcher=self.fetcher)
            sim = await farm.start_builder("bob", ("i386",))
            sim.fast_path = kind == "fast"
            self.farms.append(farm)
            self.clocks.append(clock)
            self.sims.append(sim)

    async def connect(self, sim: SimBuilder) -> Raw:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", sim.port)
        client: Raw = await connectProtocol(endpoint, Raw())
        self.clients.append(client)
        return client

    async def exchange(self, client: Raw, request: bytes, count: int = 1) -> None:
        before = len(client.responses())
        client.send(request)
        await wait_for(self.reactor, lambda: len(client.responses()) >= before + count)

    def advance(self, seconds: float) -> None:
        for clock in self.clocks:
            clock.advance(seconds)

    async def stop(self) -> None:
        for client in self.clients:
            client.close()
        for farm in self.farms:
            await farm.stop()


@pytest_twisted.async_yield_fixture
async def builders(reactor: Any, tmp_path: Path) -> AsyncIterator[Builders]:
    fetcher = MemoryFetcher(files={"http://lib/chroot": CHROOT, "http://lib/dsc": DSC})
    fixture = Builders(reactor, fetcher)
    await fixture.start(tmp_path)
    yield fixture
    await fixture.stop()
    await wait_for_no_tcp(reactor)


@pytest_twisted.ensureDeferred
async def test_a_whole_build_gets_the_same_bytes_from_both_paths(builders: Builders) -> None:
    fast, general = builders.sims
    clients = [await builders.connect(sim) for sim in builders.sims]

    sent = 0

    async def both(request: bytes) -> None:
        nonlocal sent
        sent += 1
        for client in clients:
            await builders.exchange(client, request)

    for request in (
        rpc("echo", "ping", 1, [2]),
        rpc("info"),
        rpc("status"),
        rpc("ensurepresent", sha1_of(CHROOT), "http://lib/chroot", None, None),
        rpc("ensurepresent", sha1_of(DSC), "http://lib/dsc", None, None),
        rpc("ensurepresent", sha1_of(DSC), "http://lib/dsc", None, None),
        rpc("build", "PACKAGEBUILD-1", "binarypackage", "0" * 40, {}, ARGS),  # unknown sum
        rpc("build", "PACKAGEBUILD-1", "binarypackage", sha1_of(CHROOT), {}, {}),  # bad args
        rpc(
            "build",
            "PACKAGEBUILD-1",
            "binarypackage",
            sha1_of(CHROOT),
            {"hello_1.dsc": sha1_of(DSC)},
            ARGS,
        ),
        rpc("status"),
        rpc("clean"),  # the wrong state: Fault 8002
    ):
        await both(request)
    builders.advance(4)
    await both(rpc("status"))
    await both(get("/filecache/buildlog"))
    builders.advance(10)
    await both(rpc("status"))
    filemap = fast.state.status()["filemap"]
    assert filemap, "the build left files to collect"
    for sha1 in filemap.values():
        await both(get(f"/filecache/{sha1}"))
    await both(get(f"/filecache/{sha1_of(DSC)}"))
    await both(rpc("clean"))
    await both(rpc("status"))

    answers = [client.responses() for client in clients]
    assert len(answers[0]) == sent == 19
    assert answers[0] == answers[1]
    assert [call.method for call in fast.history] == [call.method for call in general.history]
    assert fast.fast_answered == sent, "the fast path answered every request"
    assert general.fast_answered == 0
    bodies = [body for _, body in answers[0]]
    assert xmlrpc.client.loads(bodies[8])[0][0] == ["BuilderStatus.BUILDING", "PACKAGEBUILD-1"]
    with pytest.raises(xmlrpc.client.Fault):
        xmlrpc.client.loads(bodies[10])  # clean() while building


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order_while_one_waits(
    builders: Builders,
) -> None:
    fast = builders.sims[0]
    client = await builders.connect(fast)
    builders.fetcher.paused = True
    requests = [
        rpc("ensurepresent", sha1_of(CHROOT), "http://lib/chroot", None, None),
        rpc("echo", "after"),
        get(f"/filecache/{sha1_of(CHROOT)}"),
    ]
    client.send(b"".join(requests))
    await wait_for(builders.reactor, lambda: builders.fetcher.requests)
    assert client.responses() == [], "nothing is answered before the call in front"
    assert [call.method for call in fast.history] == ["ensurepresent"]
    builders.fetcher.release()
    await wait_for(builders.reactor, lambda: len(client.responses()) == 3)
    bodies = [body for _, body in client.responses()]
    assert xmlrpc.client.loads(bodies[0])[0][0] == [True, "Download"]
    assert xmlrpc.client.loads(bodies[1])[0][0] == ["after"]
    assert bodies[2] == CHROOT, "the file the first call fetched"


@pytest_twisted.ensureDeferred
async def test_requests_cut_into_pieces_are_answered_once_whole(builders: Builders) -> None:
    fast = builders.sims[0]
    client = await builders.connect(fast)
    transport: Any = client.transport
    transport.setTcpNoDelay(True)
    stream = rpc("echo", "one") + rpc("status") + get("/filecache/nothing")
    for i in range(0, len(stream), 7):  # 7 bytes per segment, one segment per reactor turn
        client.send(stream[i : i + 7])
        await deferLater(builders.reactor, 0, lambda: None)
    await wait_for(builders.reactor, lambda: len(client.responses()) == 3)
    heads = [head.split(b"\r\n")[0] for head, _ in client.responses()]
    assert heads == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"]
    assert fast.fast_answered == 2, "the 404 is twisted.web's"


@pytest_twisted.ensureDeferred
async def test_a_connection_handed_to_twisted_web_goes_on_working(builders: Builders) -> None:
    fast = builders.sims[0]
    client = await builders.connect(fast)
    await builders.exchange(client, rpc("status"))
    await builders.exchange(client, rpc("no_such_method"))  # twisted.web's Fault 8001
    await builders.exchange(client, b"HEAD /filecache/buildlog HTTP/1.1\r\nHost: b\r\n\r\n")
    await builders.exchange(client, rpc("echo", "still here"))
    bodies = [body for _, body in client.responses()]
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(bodies[1])
    assert info.value.faultCode == 8001
    assert client.responses()[2][0].startswith(b"HTTP/1.1 404")
    assert xmlrpc.client.loads(bodies[3])[0][0] == ["still here"]
    assert fast.fast_answered == 1


@pytest_twisted.ensureDeferred
async def test_a_client_gone_while_its_answer_waits_breaks_nothing(builders: Builders) -> None:
    fast = builders.sims[0]
    client = await builders.connect(fast)
    builders.fetcher.paused = True
    client.send(rpc("ensurepresent", sha1_of(DSC), "http://lib/dsc", None, None))
    await wait_for(builders.reactor, lambda: builders.fetcher.requests)
    client.close()
    await client.lost
    await wait_for(builders.reactor, lambda: fast.open_connections == 0)
    builders.fetcher.release()
    assert fast.state.cache.has(sha1_of(DSC)), "the download completed all the same"
    again = await builders.connect(fast)
    await builders.exchange(again, rpc("ensurepresent", sha1_of(DSC), None, None, None))
    assert xmlrpc.client.loads(again.responses()[0][1])[0][0] == [True, "No URL"]
