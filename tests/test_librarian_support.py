"""Helpers shared by the librarian tests (no tests here; each test module makes its fixtures
from these).

:func:`serve` puts a librarian on 127.0.0.1 port 0 behind a real twisted.web Site; the
:class:`Client` talks to it over real HTTP with ``twisted.web.client.Agent``, or sends raw
bytes for requests Agent will not make.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.web import client, resource
from twisted.web.http_headers import Headers

from buildmaster.librarian import Librarian
from buildmaster.librarian.guard import GuardedSite
from buildmaster.store.database import Database

SECRET = b"0123456789abcdef0123456789abcdef"


def make_librarian(reactor: Any, db: Database, root: Path, **kw: Any) -> Librarian:
    return Librarian(
        reactor, db, root=root, public_url="http://127.0.0.1:1/librarian/", secret=SECRET, **kw
    )


@attrs.frozen
class Response:
    code: int
    headers: Headers
    body: bytes
    length: int | None  # Content-Length (Agent takes it out of the headers)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None


def basic_auth(password: str, user: str = "buildd") -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class ExpectContinue(protocol.Protocol):
    """A client that waits for ``100 Continue`` before it sends a request's body."""

    def __init__(self, head: bytes, body: bytes) -> None:
        self._head = head
        self._body = body
        self._sent = False
        self.data = b""
        self.done: defer.Deferred[tuple[bytes, bool]] = defer.Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self._head)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self._sent and self.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            self._sent = True
            transport: Any = self.transport
            transport.write(self._body)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback((self.data, self._sent))


class _Body(protocol.Protocol):
    """Collects a response body (``readBody`` warns about Agent's own transports in
    Twisted 26)."""

    def __init__(self) -> None:
        self.data = io.BytesIO()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if reason is not None and reason.check(client.ResponseDone):
            self.done.callback(self.data.getvalue())
        else:
            self.done.errback(reason)


async def read_body(response: Any) -> bytes:
    body = _Body()
    response.deliverBody(body)
    return await body.done


class _Collect(protocol.Protocol):
    """Sends a raw request; collects the raw answer until the connection closes.

    ``stop_after``: hang up after that many bytes. ``pause_every``: stop reading for 50 ms
    after every that many bytes.
    """

    def __init__(
        self,
        request: bytes,
        stop_after: int | None = None,
        pause_every: int | None = None,
        clock: Any = None,
    ) -> None:
        self._request = request
        self._stop_after = stop_after
        self._pause_every = pause_every
        self._clock = clock
        self._since_pause = 0
        self.data = io.BytesIO()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.data.write(data)
        transport: Any = self.transport
        if self._stop_after is not None and self.data.tell() >= self._stop_after:
            transport.abortConnection()
            return
        if self._pause_every is not None:
            self._since_pause += len(data)
            if self._since_pause >= self._pause_every:
                self._since_pause = 0
                transport.pauseProducing()
                self._clock.callLater(0.05, transport.resumeProducing)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data.getvalue())


class Client:
    """HTTP to the served librarian: Agent for normal requests, raw bytes for odd ones."""

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port
        self.base = f"http://127.0.0.1:{port}/librarian/"
        self._pool = client.HTTPConnectionPool(reactor, persistent=False)
        self._agent = client.Agent(reactor, pool=self._pool)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str | bytes] | None = None,
        body: bytes | None = None,
    ) -> Response:
        if not url.startswith("http"):
            url = self.base + url
        raw = Headers()
        for name, value in (headers or {}).items():
            raw.addRawHeader(name, value if isinstance(value, bytes) else value.encode())
        producer: Any = client.FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = await self._agent.request(method.encode(), url.encode(), raw, producer)
        data = await read_body(response) if method != "HEAD" else b""
        length = response.length if isinstance(response.length, int) else None
        return Response(response.code, response.headers, data, length)

    async def raw(self, request: bytes) -> bytes:
        """Send ``request`` as is on a new connection; everything the server answered."""
        collector = _Collect(request)
        await protocol.ClientCreator(self.reactor, lambda: collector).connectTCP(
            "127.0.0.1", self.port
        )
        return await collector.done

    async def expect_continue(self, head: bytes, body: bytes) -> tuple[bytes, bool]:
        """Send the head of a request that asks ``Expect: 100-continue``, and its body only
        once the server answered ``100 Continue``. Everything the server answered until it
        closed the connection, and whether the body was sent."""
        collector = ExpectContinue(head, body)
        await protocol.ClientCreator(self.reactor, lambda: collector).connectTCP(
            "127.0.0.1", self.port
        )
        return await collector.done

    def _path(self, url: str) -> str:
        return "/" + url.split("/", 3)[3] if url.startswith("http") else url

    async def partial(self, url: str, at_least: int) -> bytes:
        """GET ``url`` and hang up after ``at_least`` bytes of body: what was received."""
        path = self._path(url)
        collector = _Collect(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            stop_after=at_least,
        )
        await protocol.ClientCreator(self.reactor, lambda: collector).connectTCP(
            "127.0.0.1", self.port
        )
        raw = await collector.done
        return raw.partition(b"\r\n\r\n")[2]

    async def slow_get(self, url: str) -> bytes:
        """GET ``url``, reading in fits and starts (the server's socket fills up)."""
        path = self._path(url)
        collector = _Collect(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            pause_every=2 * 1024 * 1024,
            clock=self.reactor,
        )
        await protocol.ClientCreator(self.reactor, lambda: collector).connectTCP(
            "127.0.0.1", self.port
        )
        raw = await collector.done
        return raw.partition(b"\r\n\r\n")[2]

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


@attrs.define
class Served:
    librarian: Librarian
    client: Client
    port: Any

    def both(self, url: str) -> list[str]:
        """``url``, and the same file from the resource that does not use sendfile."""
        return [url, url.replace("/librarian/", "/librarian-plain/", 1)]


@contextlib.asynccontextmanager
async def serve(reactor: Any, lib: Librarian) -> AsyncIterator[Served]:
    """``lib`` mounted at ``/librarian/`` of a Site listening on 127.0.0.1, port 0 (and at
    ``/librarian-plain/`` without sendfile); its public URL pointed there."""
    root = resource.Resource()
    site = GuardedSite(root, lambda: lib)  # the master's, guard included
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    number = port.getHost().port
    lib.public_url = f"http://127.0.0.1:{number}/librarian/"
    root.putChild(b"librarian", lib.resource())
    root.putChild(b"librarian-plain", lib.resource(use_sendfile=False))
    http_client = Client(reactor, number)
    try:
        yield Served(lib, http_client, port)
    finally:
        await http_client.close()
        await port.stopListening()


async def row_counts(db: Database) -> tuple[int, int]:
    """(content rows, alias rows)."""
    rows = await db.query(
        "SELECT (SELECT count(*) FROM libraryfilecontent), (SELECT count(*) FROM libraryfilealias)"
    )
    return int(rows[0][0]), int(rows[0][1])


def stored_files(root: Path) -> list[Path]:
    """Every file under the librarian's root, temporary ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def assert_nothing_stored(lib: Librarian, db: Database) -> None:
    assert await row_counts(db) == (0, 0)
    assert stored_files(lib.root) == []
