"""Fakes and helpers for tests that drive slavesim (public: embedders' tests may use them)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from slavesim.cache import FetchError, Sink

__all__ = [
    "FileServer",
    "FileServerResource",
    "MemoryFetcher",
    "leftover_delayed_calls",
    "outcome_of",
    "read_body",
    "tcp_connections",
    "wait_for",
    "wait_for_no_tcp",
]


@define
class MemoryFetcher:
    """A :class:`slavesim.cache.Fetcher` serving bytes from a dict, no sockets.

    - ``files``: ``{url: body}``; a URL absent from it fails as a 404 would.
    - ``credentials``: ``{url: (username, password)}``: such a URL fails with a 401 unless
      fetched with exactly these.
    - ``errors``: ``{url: reason}``: fetching such a URL fails with that reason.
    - ``paused``: while true, fetches wait until :meth:`release` is called.
    - ``requests``: every ``(url, username, password)`` fetched, in order.
    """

    files: dict[str, bytes] = field(factory=dict)
    credentials: dict[str, tuple[str, str]] = field(factory=dict)
    errors: dict[str, str] = field(factory=dict)
    paused: bool = False
    requests: list[tuple[str, str | None, str | None]] = field(factory=list)
    _waiting: list[tuple[Deferred[None], str, str | None, str | None, Sink]] = field(factory=list)

    def fetch(
        self, url: str, username: str | None, password: str | None, sink: Sink
    ) -> Deferred[None]:
        """Write ``files[url]`` into ``sink`` (now, or on :meth:`release` when paused)."""
        self.requests.append((url, username, password))
        if not self.paused:
            return self._serve(url, username, password, sink)
        d: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiting.append((d, url, username, password, sink))
        return d

    def release(self) -> None:
        """Let every paused fetch complete."""
        waiting, self._waiting = self._waiting, []
        for d, url, username, password, sink in waiting:
            self._serve(url, username, password, sink).chainDeferred(d)

    def _forget(self, d: Deferred[None]) -> None:
        self._waiting = [w for w in self._waiting if w[0] is not d]

    def _serve(
        self, url: str, username: str | None, password: str | None, sink: Sink
    ) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        try:
            if url in self.errors:
                raise FetchError(self.errors[url])
            wanted = self.credentials.get(url)
            if wanted is not None and (username, password) != wanted:
                raise FetchError("HTTP Error 401: Unauthorized")
            if url not in self.files:
                raise FetchError("HTTP Error 404: Not Found")
            body = self.files[url]
            sink.expect_length(len(body))
            sink.write(body)
        except FetchError as e:
            d.errback(e)
        else:
            d.callback(None)
        return d


@define
class FileServer:
    """What :class:`FileServerResource` serves: a tiny librarian for download tests.

    - ``files``: ``{path: body}`` (path as in the URL, e.g. ``"/chroot.tar.gz"``);
    - ``credentials``: ``{path: (username, password)}``: such a path answers ``401`` with a
      ``WWW-Authenticate: Basic`` challenge unless the request carries exactly these;
    - ``hanging``: paths that are never answered;
    - ``no_length``: paths whose body is sent without a Content-Length;
    - ``requests``: ``(path, authorization header or None)`` of every request received.
    """

    files: dict[str, bytes] = field(factory=dict)
    credentials: dict[str, tuple[str, str]] = field(factory=dict)
    hanging: set[str] = field(factory=set)
    no_length: set[str] = field(factory=set)
    requests: list[tuple[str, bytes | None]] = field(factory=list)


class FileServerResource(Resource):
    """A ``twisted.web`` resource serving a :class:`FileServer`."""

    isLeaf = True

    def __init__(self, server: FileServer) -> None:
        super().__init__()
        self._server = server

    def render_GET(self, request: Request) -> bytes | int:
        path = request.path.decode()
        authorization = request.getHeader(b"authorization")
        self._server.requests.append((path, authorization))
        if path in self._server.hanging:
            return NOT_DONE_YET
        wanted = self._server.credentials.get(path)
        if wanted is not None:
            token = base64.b64encode(f"{wanted[0]}:{wanted[1]}".encode())
            if authorization != b"Basic " + token:
                request.setResponseCode(401, b"Unauthorized")
                request.setHeader(b"www-authenticate", b'Basic realm="test"')
                return b"authorisation required"
        body = self._server.files.get(path)
        if body is None:
            request.setResponseCode(404, b"Not Found")
            return b"no such file"
        request.setHeader(b"content-type", b"application/octet-stream")
        if path in self._server.no_length:
            request.write(body)
            request.finish()
            return NOT_DONE_YET
        return body


def tcp_connections(reactor: Any) -> list[object]:
    """The TCP ports and connections ``reactor`` is watching."""
    return [
        selectable
        for selectable in set(reactor.getReaders()) | set(reactor.getWriters())
        if isinstance(selectable, tcp.Connection | tcp.Port)
    ]


async def wait_for(reactor: Any, condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let ``reactor`` run until ``condition()`` is true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {condition}")
        await deferLater(reactor, 0.005, lambda: None)


async def wait_for_no_tcp(reactor: Any, timeout: float = 5.0) -> None:
    """Wait until ``reactor`` has no TCP port or connection left (closing takes a turn)."""
    await wait_for(reactor, lambda: not tcp_connections(reactor), timeout)


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self._chunks: list[bytes] = []
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._done.callback(b"".join(self._chunks))


def read_body(response: Any) -> Deferred[bytes]:
    """The whole body of an ``IResponse`` (however it ended: tests check its content).

    Unlike ``twisted.web.client.readBody`` this does not warn when the body has already
    been received by the time it is asked for.
    """
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done))
    return done


def leftover_delayed_calls(reactor: Any, before: set[Any]) -> list[Any]:
    """Delayed calls of ``reactor`` not in ``before`` (pytest-twisted's own excepted)."""
    return [
        call
        for call in reactor.getDelayedCalls()
        if call not in before and getattr(call.func, "__module__", "") != "pytest_twisted"
    ]


def outcome_of(d: Deferred[Any]) -> list[Any]:
    """A list that gets ``d``'s result (or Failure) once ``d`` fires; ``d`` is unchanged.

    ``Deferred.called`` cannot tell: it is true while ``d`` waits on another Deferred.
    """
    seen: list[Any] = []

    def note(result: Any) -> Any:
        seen.append(result)
        return result

    d.addBoth(note)
    return seen
