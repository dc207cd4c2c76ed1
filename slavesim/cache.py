"""A builder's file cache: files named by their SHA-1, filled by downloading URLs.

:class:`FileCache` answers ``ensurepresent`` with the values the real daemon gives
(``[True, "Cache"]``, ``[True, "Download"]``, ``[False, "No URL"]``,
``[False, "Digests did not match, removing again!"]``,
``[False, "Error accessing Librarian: <reason>"]``), downloads through a :class:`Fetcher`
(streamed to a temporary file, hashed as it arrives, size-capped) and keeps every file under
its SHA-1. :class:`AgentFetcher` is the real fetcher, on ``twisted.web.client.Agent``;
:class:`slavesim.testing.MemoryFetcher` is a fake one for unit tests.

The reasons in ``Error accessing Librarian: ...`` are worded as Python's urllib words them in
the real daemon (``HTTP Error 404: Not Found``, ``<urlopen error [Errno 111] Connection
refused>``, ``unknown url type: ''``).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from slavesim.wire import is_sha1

__all__ = [
    "BUILDLOG",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_DOWNLOAD",
    "AgentFetcher",
    "FetchError",
    "Fetcher",
    "FileCache",
    "Sink",
    "download_agent",
]

#: The name of the build log in the cache directory (served as ``/filecache/buildlog``).
BUILDLOG = "buildlog"
DEFAULT_MAX_DOWNLOAD = 1024 * 1024 * 1024
DEFAULT_DOWNLOAD_TIMEOUT = 600.0
_ERROR_BODY_LIMIT = 64 * 1024

_log = Logger()


class FetchError(Exception):
    """A download failed; ``str()`` is the reason after ``Error accessing Librarian: ``."""


class Sink(Protocol):
    """Where a fetcher writes a body, chunk by chunk."""

    def expect_length(self, length: int) -> None:
        """The body will be ``length`` bytes long; raise :class:`FetchError` to refuse it."""

    def write(self, data: bytes) -> None:
        """Take the next chunk; raise :class:`FetchError` to stop the download."""


class Fetcher(Protocol):
    """Downloads URLs for a :class:`FileCache`."""

    def fetch(
        self, url: str, username: str | None, password: str | None, sink: Sink
    ) -> Deferred[None]:
        """Write the body of ``url`` into ``sink``.

        Fires with ``None`` once the body has ended (a body cut short simply ends early, as
        with urllib); fails with :class:`FetchError` when the URL cannot be fetched.
        Cancelling it stops the download.
        """


class _HashingFile:
    """A :class:`Sink` writing to a file, hashing and counting as it goes."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self._file = open(path, "wb")
        self._sha1 = hashlib.sha1()
        self._size = 0
        self._limit = limit

    def expect_length(self, length: int) -> None:
        if length > self._limit:
            raise FetchError(f"<urlopen error file larger than {self._limit} bytes>")

    def write(self, data: bytes) -> None:
        self._size += len(data)
        self.expect_length(self._size)
        self._file.write(data)
        self._sha1.update(data)

    def close(self) -> str:
        self._file.close()
        return self._sha1.hexdigest()


class FileCache:
    """One builder's file cache, in its own directory.

    Files are named by their SHA-1; the build log lives beside them as ``buildlog``.
    Several ``ensure_present`` calls for the same SHA-1 are served one after the other,
    as the real daemon (which blocks while downloading) would.
    """

    def __init__(self, directory: Path, fetcher: Fetcher, max_size: int) -> None:
        self.directory = directory
        self._fetcher = fetcher
        self._max_size = max_size
        self._locks: dict[str, DeferredLock] = {}
        self._fetches: set[Deferred[None]] = set()
        self._counter = itertools.count()
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        """Where the build log is kept."""
        return self.directory / BUILDLOG

    def path(self, sha1: str) -> Path:
        """The file holding ``sha1`` (which must be a valid SHA-1)."""
        if not is_sha1(sha1):
            raise ValueError(f"not a SHA-1: {sha1!r:.80}")
        return self.directory / sha1

    def has(self, sha1: str) -> bool:
        """Whether ``sha1`` is in the cache."""
        return self.path(sha1).is_file()

    def store(self, data: bytes) -> str:
        """Put ``data`` into the cache; return its SHA-1."""
        sha1 = hashlib.sha1(data).hexdigest()
        path = self.path(sha1)
        if not path.exists():
            tmp = self.directory / f".store-{next(self._counter)}.part"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha1

    def remove(self, sha1: str) -> None:
        """Remove ``sha1`` from the cache (nothing happens when it is absent)."""
        self.path(sha1).unlink(missing_ok=True)

    def files(self) -> set[str]:
        """The SHA-1s of every file in the cache."""
        return {p.name for p in self.directory.iterdir() if is_sha1(p.name)}

    def ensure_present(
        self, sha1: str, url: str | None, username: str | None, password: str | None
    ) -> Deferred[list[object]]:
        """Answer ``ensurepresent``: make sure ``sha1`` is cached, downloading ``url``.

        Fires with ``[present, message]`` as the real daemon returns it; never fails.
        """
        return Deferred.fromCoroutine(self._ensure_present(sha1, url, username, password))

    async def _ensure_present(
        self, sha1: str, url: str | None, username: str | None, password: str | None
    ) -> list[object]:
        if url is None:
            return [self.has(sha1), "No URL"]
        lock = self._locks.setdefault(sha1, DeferredLock())
        await lock.acquire()
        try:
            if self.has(sha1):
                return [True, "Cache"]
            return await self._download(sha1, url, username, password)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting and self._locks.get(sha1) is lock:
                del self._locks[sha1]

    async def _download(
        self, sha1: str, url: str, username: str | None, password: str | None
    ) -> list[object]:
        _log.info("Fetching {sha1} by url {url}", sha1=sha1, url=url)
        sink = _HashingFile(self.directory / f".{sha1}.{next(self._counter)}.part", self._max_size)
        digest = None
        try:
            fetch = self._fetcher.fetch(url, username, password, sink)
            self._fetches.add(fetch)
            try:
                await fetch
            finally:
                self._fetches.discard(fetch)
            digest = sink.close()
        except FetchError as e:
            message = f"Error accessing Librarian: {e}"
            _log.info("{message}", message=message)
            return [False, message]
        except CancelledError:
            return [False, "Error accessing Librarian: <urlopen error cancelled>"]
        finally:
            if digest is None:
                sink.close()
            if digest != sha1:
                sink.path.unlink(missing_ok=True)
        if digest != sha1:
            message = "Digests did not match, removing again!"
            _log.info("{sha1}: {message}", sha1=sha1, message=message)
            return [False, message]
        os.replace(sink.path, self.path(sha1))
        return [True, "Download"]

    def cancel_downloads(self) -> None:
        """Stop every download in progress (their calls answer with an error)."""
        for fetch in list(self._fetches):
            fetch.cancel()


class _BodyToSink(TwistedProtocol):
    """Deliver a response body into a :class:`Sink`, up to the end of the body."""

    def __init__(self, sink: Sink, done: Deferred[None]) -> None:
        self._sink = sink
        self._done = done
        self._failed = False

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._sink.write(data)
        except FetchError as e:
            self._failed = True
            assert self.transport is not None
            self.transport.stopProducing()
            self._done.errback(e)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self._failed:
            # Like urllib's read(), a body cut short just ends (the digest then tells).
            self._done.callback(None)


class _Discard:
    """A :class:`Sink` that drops what it gets (the body of an error page)."""

    def __init__(self, limit: int) -> None:
        self._left = limit

    def expect_length(self, length: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            raise FetchError("error page too large")


class _Refuse(TwistedProtocol):
    """Refuse a response body: stop it at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        pass


def _deliver(response: Any, sink: Sink) -> Deferred[None]:
    protocol: _BodyToSink

    def cancel(d: Deferred[None]) -> None:
        if protocol.transport is not None:
            protocol.transport.stopProducing()

    done: Deferred[None] = Deferred(cancel)
    protocol = _BodyToSink(sink, done)
    response.deliverBody(protocol)
    return done


def _basic_challenge(response: Any) -> bool:
    return any(
        value.strip().lower().startswith(b"basic")
        for value in response.headers.getRawHeaders(b"www-authenticate", [])
    )


def _urlopen_reason(failure: Failure) -> str:
    """Word a transport failure as urllib does in ``Error accessing Librarian: ...``."""
    if failure.check(ierror.ConnectionRefusedError):
        return "<urlopen error [Errno 111] Connection refused>"
    if failure.check(ierror.DNSLookupError):
        return "<urlopen error [Errno -2] Name or service not known>"
    if failure.check(ierror.TimeoutError):
        return "<urlopen error timed out>"
    if failure.check(ResponseNeverReceived, RequestTransmissionFailed):
        return "Remote end closed connection without response"
    return f"<urlopen error {failure.getErrorMessage()}>"


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Where a download connects: an IPv4 address directly; a name through
    ``HostnameEndpoint`` (which resolves it in a thread, and connects to IPv6 addresses
    without resolving them)."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii")
        endpoint: Any
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        return _Quiet(endpoint)


@implementer(IStreamClientEndpoint)
class _Quiet:
    """An endpoint whose connections' factories do not log "Starting factory" and "Stopping
    factory" (the agent makes one factory per connection: two lines per download)."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Any:
        factory.noisy = False
        return self._endpoint.connect(factory)


def download_agent(reactor: Any, pool: Any, connect_timeout: float = 30) -> Any:
    """The ``Agent`` :class:`AgentFetcher` downloads with in a simulated farm.

    The real daemon's urllib resolves a URL's host with a blocking ``getaddrinfo``, which
    costs nothing for an IP address. Twisted's ``HostnameEndpoint`` sends even an IP address
    to a resolver thread; with hundreds of builders in one process, those thread round trips
    were most of a small download's time. This agent connects to an IPv4 address at once;
    what goes over the wire is the same.
    """
    return Agent.usingEndpointFactory(reactor, _Endpoints(reactor, connect_timeout), pool=pool)


class AgentFetcher:
    """Download with a non-blocking ``IAgent``, with a timeout on ``clock`` (IReactorTime).

    Credentials are sent the way the real daemon's urllib ``HTTPBasicAuthHandler`` sends
    them: only when ``username`` is not empty, and only in answer to a ``401`` carrying a
    ``WWW-Authenticate: Basic`` challenge. Only ``http`` URLs are supported.
    """

    def __init__(self, agent: Any, clock: Any, timeout: float) -> None:
        self._agent = agent
        self._clock = clock
        self._timeout = timeout

    def fetch(
        self, url: str, username: str | None, password: str | None, sink: Sink
    ) -> Deferred[None]:
        """See :meth:`Fetcher.fetch`; a download taking over ``timeout`` seconds fails."""
        d = Deferred.fromCoroutine(self._fetch(url, username, password, sink))
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self._clock.callLater(self._timeout, time_out)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        def translate(failure: Failure) -> Failure:
            if timed_out:
                # Whatever cancelling made of it (the agent wraps it in its own errors).
                raise FetchError("<urlopen error timed out>")
            if failure.check(FetchError, CancelledError):
                return failure
            # Like the real daemon, which catches every exception urlopen() raises.
            raise FetchError(_urlopen_reason(failure))

        d.addBoth(stop_timer)
        d.addErrback(translate)
        return d

    async def _request(self, url: bytes, headers: Headers) -> Any:
        return await self._agent.request(b"GET", url, headers)

    async def _fetch(
        self, url: str, username: str | None, password: str | None, sink: Sink
    ) -> None:
        scheme = urlsplit(url).scheme if "://" in url else ""
        if not scheme:
            raise FetchError(f"unknown url type: {url!r}")
        if scheme != "http":
            raise FetchError(f"<urlopen error unknown url type: {scheme}>")
        try:
            raw_url = url.encode("ascii")
        except UnicodeEncodeError:
            raise FetchError(f"<urlopen error URL is not ASCII: {url!r}>") from None
        headers = Headers({b"user-agent": [b"slavesim"]})
        response = await self._request(raw_url, headers)
        if response.code == 401 and username and _basic_challenge(response):
            await _deliver(response, _Discard(_ERROR_BODY_LIMIT))
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            headers.setRawHeaders(b"authorization", [f"Basic {token}".encode()])
            response = await self._request(raw_url, headers)
        if response.code != 200:
            try:
                await _deliver(response, _Discard(_ERROR_BODY_LIMIT))
            except FetchError:
                pass  # an oversized error page: we only meant to drop it anyway
            phrase = response.phrase.decode("latin-1")
            raise FetchError(f"HTTP Error {response.code}: {phrase}")
        if isinstance(response.length, int):
            try:
                sink.expect_length(response.length)
            except FetchError:
                response.deliverBody(_Refuse())
                raise
        await _deliver(response, sink)
