"""Downloads from a builder's /filecache, over real sockets with the deadlines on a
task.Clock: paced, not timed as a whole (a slow but steady download of any length goes
through; one that stalls, or trickles, is cut), waits for our own disk never count, and a
build's files come a few at a time."""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from rawhttp import RawConnection, RawServer, http_response
from twisted.internet import defer, task
from twisted.internet.task import Clock

from buildmaster.builderclient import BuilderClient, BuilderUnreachable
from buildmaster.httpclient import HTTPClient
from buildmaster.scan.collect import CollectLimits, ResultCollector
from buildmaster.testing import wait_for

TIMEOUT = 40.0  # the builder's call timeout (the old whole-transfer deadline: 20 x 40 s)
KiB = 1024


class Download:
    """One ``fetch_file`` from the raw server, with the deadlines on ``clock``."""

    def __init__(self, reactor: Any, server: RawServer, clock: Clock, **pace: Any) -> None:
        self.http = HTTPClient(reactor, clock=clock)
        self.client = BuilderClient(self.http, server.url, timeout=TIMEOUT)
        self.received = 0
        self.outcome: list[Any] = []
        d = defer.Deferred.fromCoroutine(
            self.client.fetch_file("0" * 40, self.sink, 16 * 1024**3, **pace)
        )
        d.addBoth(self.outcome.append)

    def sink(self, data: bytes) -> Any:
        self.received += len(data)
        return None

    @property
    def error(self) -> BaseException | None:
        return self.outcome[0].value if self.outcome and hasattr(self.outcome[0], "value") else None


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[RawServer]:
    raw = RawServer(reactor).start()
    yield raw
    await raw.stop()


def received(download: Download, total: int) -> Callable[[], bool]:
    return lambda: download.received == total


def has_length(items: list[Any], length: int) -> Callable[[], bool]:
    return lambda: len(items) == length


async def turn(reactor: Any) -> None:
    """Let the reactor run a few turns (an aborted connection is reported in the next one;
    bytes on the loopback take one to be written and one to be read)."""
    for _ in range(3):
        await task.deferLater(reactor, 0, lambda: None)


async def connected(reactor: Any, server: RawServer) -> RawConnection:
    await wait_for(reactor, lambda: server.connections and server.connections[-1].requests)
    return server.connections[-1]


@pytest_twisted.ensureDeferred
async def test_a_slow_but_steady_download_outlasts_the_old_deadline(
    reactor: Any, server: RawServer
) -> None:
    """70 MiB at 85 KiB a second, above the default pace of 64 KiB/s, take 840 s: longer than
    the 800 s the whole transfer used to have."""
    clock = Clock()
    piece, pieces, every = 256 * KiB, 280, 3.0
    download = Download(reactor, server, clock)
    connection = await connected(reactor, server)
    connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (piece * pieces))
    for n in range(1, pieces + 1):
        connection.send(b"x" * piece)
        await wait_for(reactor, received(download, n * piece))
        if n < pieces:
            assert not download.outcome
            clock.advance(every)
    await wait_for(reactor, lambda: download.outcome)
    assert download.outcome == [piece * pieces]
    assert clock.seconds() == (pieces - 1) * every > 20 * TIMEOUT
    download.http.abort_all()


@pytest_twisted.ensureDeferred
async def test_a_stalled_download_fails_at_the_inactivity_timeout(
    reactor: Any, server: RawServer
) -> None:
    """Once a download has shown its pace (8 MiB at once), going quiet for the inactivity
    timeout ends it."""
    clock = Clock()
    download = Download(reactor, server, clock)
    connection = await connected(reactor, server)
    connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (100 * 1024**2))
    connection.send(b"x" * 8 * 1024**2)
    await wait_for(reactor, lambda: download.received == 8 * 1024**2)
    clock.advance(59)
    await turn(reactor)
    assert not download.outcome  # still going
    clock.advance(1)
    await wait_for(reactor, lambda: download.outcome)
    assert isinstance(download.error, BuilderUnreachable)
    assert str(download.error) == "fetching " + "0" * 40 + ": no data for 60 seconds"
    await wait_for(reactor, lambda: connection.closed, 60, "the connection to be dropped")
    download.http.abort_all()


@pytest_twisted.ensureDeferred
async def test_a_trickle_is_cut_whatever_size_it_announces(reactor: Any, server: RawServer) -> None:
    """A byte now and then keeps clear of the inactivity timeout, and an announced 8 GiB
    would make a ceiling of days: the pace cuts it soon after the call timeout."""
    clock = Clock()
    download = Download(reactor, server, clock)
    connection = await connected(reactor, server)
    connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 * 1024**3))
    sent = 0
    while not download.outcome:
        connection.send(b"x" * KiB)
        sent += KiB
        await wait_for(reactor, received(download, sent))
        clock.advance(10)
        await turn(reactor)
        assert clock.seconds() < 200, "the trickle was never cut"
    assert isinstance(download.error, BuilderUnreachable)
    assert "slower than 65536 bytes a second" in str(download.error)
    assert TIMEOUT <= clock.seconds() <= TIMEOUT + 10
    download.http.abort_all()


@pytest_twisted.ensureDeferred
async def test_waiting_for_our_disk_is_not_the_builders_fault(
    reactor: Any, server: RawServer
) -> None:
    clock = Clock()
    http = HTTPClient(reactor, clock=clock)
    client = BuilderClient(http, server.url, timeout=TIMEOUT)
    disk: list[defer.Deferred[None]] = []
    received: list[bytes] = []

    def slow_disk(data: bytes) -> defer.Deferred[None]:
        received.append(data)
        disk.append(defer.Deferred())
        return disk[-1]

    outcome: list[Any] = []
    d = defer.Deferred.fromCoroutine(client.fetch_file("0" * 40, slow_disk, 1024**2))
    d.addBoth(outcome.append)
    connection = await connected(reactor, server)
    connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789")
    await wait_for(reactor, lambda: disk)
    clock.advance(1000)  # the disk takes its time: longer than any deadline
    assert not outcome
    disk[-1].callback(None)
    connection.send(b"abcdefghij")
    await wait_for(reactor, lambda: len(disk) == 2)
    disk[-1].callback(None)
    await wait_for(reactor, lambda: outcome)
    assert outcome == [20] and b"".join(received) == b"0123456789abcdefghij"
    http.abort_all()


def files(count: int) -> dict[str, bytes]:
    return {f"pkg{i}_1.0_all.deb": f"package {i}\n".encode() * 1000 for i in range(count)}


@pytest_twisted.async_yield_fixture
async def librarian(make_world: Any) -> AsyncIterator[Any]:
    world = await make_world()
    yield world.harness.librarian


class Collection:
    """``ResultCollector.collect`` of ``content`` (name: bytes) from the raw server, with
    the deadlines on ``clock``; ``outcome`` gets its result (or failure)."""

    def __init__(
        self,
        server: RawServer,
        librarian: Any,
        content: dict[str, bytes],
        limits: CollectLimits,
        clock: Clock,
        reactor: Any,
    ) -> None:
        self.http = HTTPClient(reactor, clock=clock)
        client = BuilderClient(self.http, server.url, timeout=TIMEOUT)
        collector = ResultCollector(librarian, client, limits, datetime.datetime.now(datetime.UTC))
        wanted = {name: hashlib.sha1(data).hexdigest() for name, data in content.items()}
        self.outcome: list[Any] = []
        d = defer.Deferred.fromCoroutine(collector.collect(wanted, None, restricted=False))
        d.addBoth(self.outcome.append)


@pytest.mark.parametrize("downloads", [1, 3])
@pytest_twisted.ensureDeferred
async def test_a_builds_files_come_a_few_at_a_time(
    reactor: Any, server: RawServer, librarian: Any, downloads: int
) -> None:
    content = files(10)
    by_sha1 = {hashlib.sha1(data).hexdigest(): data for data in content.values()}
    waiting: list[tuple[RawConnection, bytes]] = []
    most = 0

    def respond(connection: RawConnection, request: bytes) -> None:
        nonlocal most
        match = re.match(rb"GET /filecache/([0-9a-f]{40}) HTTP/1\.1", request)
        assert match is not None
        waiting.append((connection, by_sha1[match.group(1).decode()]))
        most = max(most, len(waiting))

    server.respond = respond
    limits = CollectLimits(max_downloads=downloads)
    collection = Collection(server, librarian, content, limits, Clock(), reactor)
    outcome = collection.outcome
    answered = 0
    while answered < len(content):
        expected = min(downloads, len(content) - answered)
        await wait_for(reactor, has_length(waiting, expected))
        await turn(reactor)  # (time for a request too many to show up)
        connection, data = waiting.pop(0)
        connection.send(http_response(data))
        answered += 1
    await wait_for(reactor, lambda: outcome)
    assert most == downloads
    (collected,) = outcome
    assert collected.refused is None and [name for name, _ in collected.files] == list(content)
    for name, alias in collected.files:
        assert await librarian.read_bytes(alias) == content[name]
    collection.http.abort_all()


@pytest_twisted.ensureDeferred
async def test_once_the_budget_is_spent_the_other_downloads_stop(
    reactor: Any, server: RawServer, librarian: Any
) -> None:
    """The first file takes the whole budget; the second, still on its way (the builder has
    not answered yet), is not waited for: its connection is dropped at once, no deadline
    has to pass (the clock never moves)."""
    content = files(2)
    by_sha1 = {hashlib.sha1(data).hexdigest(): data for data in content.values()}
    first, second = (hashlib.sha1(data).hexdigest() for data in content.values())
    held: list[RawConnection] = []

    def respond(connection: RawConnection, request: bytes) -> None:
        match = re.match(rb"GET /filecache/([0-9a-f]{40}) HTTP/1\.1", request)
        assert match is not None
        if match.group(1).decode() == first:
            connection.send(http_response(by_sha1[first]))
        else:
            held.append(connection)

    server.respond = respond
    budget = len(by_sha1[first]) - 1
    limits = CollectLimits(max_total_size=budget)
    collection = Collection(server, librarian, content, limits, Clock(), reactor)
    outcome = collection.outcome
    await wait_for(reactor, lambda: outcome, 60, "the collection to end")
    (collected,) = outcome
    assert collected.refused == f"the result files are larger than {budget} bytes together"
    assert collected.files == ()
    assert len(held) == 1 and second in held[0].requests[0].decode()
    await wait_for(reactor, lambda: held[0].closed, 60, "the second download to be dropped")
    collection.http.abort_all()


@pytest_twisted.ensureDeferred
async def test_a_stalled_download_ends_the_collection_and_stops_the_others(
    reactor: Any, server: RawServer, librarian: Any
) -> None:
    """The builder's failure ends the collection (it is made again at a later scan): the
    other download, well ahead of its pace, is dropped rather than waited for."""
    content = files(2)
    first, second = (hashlib.sha1(data).hexdigest() for data in content.values())
    held: list[RawConnection] = []

    def respond(connection: RawConnection, request: bytes) -> None:
        if first in request.decode():
            connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nstart")
        else:  # a minute of the pace's worth at once (4 MiB), then nothing for now
            connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            connection.send(b"x" * 4 * 1024 * 1024)
            held.append(connection)

    server.respond = respond
    clock = Clock()
    collection = Collection(server, librarian, content, CollectLimits(), clock, reactor)
    outcome = collection.outcome
    await wait_for(reactor, lambda: len(server.requests()) == 2 and held)
    await turn(reactor)
    clock.advance(TIMEOUT + 1)  # "start" and nothing more: behind the pace
    await wait_for(reactor, lambda: outcome, 60, "the collection to end")
    error = outcome[0].value
    assert isinstance(error, BuilderUnreachable)
    assert str(error).startswith(f"fetching {first}: slower than 65536 bytes a second")
    await wait_for(reactor, lambda: held[0].closed, 60, "the other download to be dropped")
    collection.http.abort_all()
