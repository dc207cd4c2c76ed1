"""The HTTP face of one simulated builder: ``POST /rpc`` and ``GET /filecache/<name>``.

:class:`BuilderSite` is a ``twisted.web`` Site per builder. ``/rpc`` is an
``XMLRPC(allowNone=True)`` resource (:class:`BuilderRPC`): unknown methods get
``Fault 8001``, malformed calls and calls in the wrong state ``Fault 8002 'error'``, as the
real daemon answers. ``/filecache/<sha1>`` serves cached files, ``/filecache/buildlog`` the
build log; anything else there is a 404.

The wire faults live here: ``latency`` (the call is carried out and answered after a delay
on the injected clock), ``hang`` (requests are read and never answered), ``garbage``
(the call is carried out, its answer replaced by garbage), and the real daemon's
``blocking_downloads`` (no XML-RPC call is carried out while an ``ensurepresent`` downloads:
it waits until the downloads are over). ``status`` calls with no fault
switched on take a fast path that skips XML parsing and serialisation when possible; its
bytes are exactly what the general path writes.

The plain requests of a working farm (``POST /rpc`` and ``GET /filecache/<name>`` of a small
file, HTTP/1.1, a ``Content-Length`` or no body, no fault switched on) are answered by the
connection itself (:class:`_TrackedChannel`), without ``twisted.web``'s request and resource
machinery, which costs several times the call. The answer carries the same status line,
headers and body as the general path's. Anything else (another method or path, chunked
bodies, ``Connection: close``, HTTP/1.0, a fault, a file that must be streamed) hands the
connection over to ``twisted.web`` from that request on.
"""

from __future__ import annotations

import os
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO, NamedTuple

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.python.compat import networkString
from twisted.python.failure import Failure
from twisted.web import http, pages, server
from twisted.web.resource import Resource
from twisted.web.xmlrpc import XMLRPC, Fault, NoSuchFunction
from zope.interface import implementer

from slavesim import artifacts, wire
from slavesim.builder import SimulatedBuilder
from slavesim.faults import Faults, Garbage, Hostile

__all__ = ["BuilderRPC", "BuilderSite", "FileCacheResource", "RecordedCall"]

_FAILURE = 8002
_NOT_FOUND = 8001
_CONTENT_TYPE = b"text/xml; charset=utf-8"
_MAX_CACHED_BODY = 1024
_MAX_CACHED_BODIES = 256


class RecordedCall(NamedTuple):
    """An XML-RPC call a builder received: ``(method, args)``."""

    method: str
    args: tuple[object, ...]


_STATUS_CALL = RecordedCall("status", ())

# Bodies of argument-less XML-RPC calls already parsed, by their exact bytes (shared by all
# builders: a client sends the same bytes for every status call).
_parsed_bodies: dict[bytes, str] = {}


def _noarg_method(body: bytes) -> str | None:
    """The method of an argument-less call in ``body``, ``None`` if it is anything else."""
    method = _parsed_bodies.get(body)
    if method is not None or len(body) > _MAX_CACHED_BODY or b"<param>" in body:
        return method  # (a call with arguments is parsed once, by the general path)
    try:
        args, name = xmlrpc.client.loads(body)
    except Exception:  # not XML-RPC: the general path answers with the right Fault
        return None
    if args or not isinstance(name, str):
        return None
    if len(_parsed_bodies) < _MAX_CACHED_BODIES:
        _parsed_bodies[body] = name
    return name


def _dumps(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()


def _dumps_fault(fault: Fault) -> bytes:
    return xmlrpc.client.dumps(fault, methodresponse=True, allow_none=True).encode()


_ERROR_FAULT = _dumps_fault(Fault(_FAILURE, "error"))


# -- the fast path (see the module docstring) ---------------------------------------------------


#: A complete request the fast path may look at: ``(method, target, body, bytes used)``.
class _Request(NamedTuple):
    method: bytes
    target: bytes
    body: bytes
    end: int


_INCOMPLETE = None
#: A request the fast path leaves to twisted.web.
_GENERAL = _Request(b"", b"", b"", 0)
_MAX_FAST_HEAD = 16 * 1024
_MAX_FAST_BODY = 1024 * 1024
#: Files up to this size are answered by the fast path in one write; larger ones streamed.
_MAX_FAST_FILE = 256 * 1024
_HEAD_END = b"\r\n\r\n"


def _parse_request(data: bytes) -> _Request | None:
    """The first request in ``data``: ``None`` while incomplete, :data:`_GENERAL` when it
    is not one the fast path answers (twisted.web then parses it, from its first byte)."""
    end = data.find(_HEAD_END)
    if end < 0:
        return _INCOMPLETE if len(data) <= _MAX_FAST_HEAD else _GENERAL
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return _GENERAL
    length = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or name != name.strip():
            return _GENERAL
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit():
                return _GENERAL
            length = int(value)
        elif name == b"connection":
            if value.strip().lower() != b"keep-alive":
                return _GENERAL
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return _GENERAL
    method = parts[0]
    if method == b"POST":
        if length is None or length > _MAX_FAST_BODY:
            return _GENERAL
    elif method != b"GET" or length:
        return _GENERAL
    start = end + len(_HEAD_END)
    stop = start + (length or 0)
    if len(data) < stop:
        return _INCOMPLETE
    return _Request(method, parts[1], data[start:stop], stop)


_SERVER = networkString(f"Server: {server.version.decode('ascii')}\r\n")
_date_second = -1
_date_line = b""


def _date() -> bytes:
    """The ``Date`` header line, made once a second."""
    global _date_second, _date_line
    now = time.time()
    if int(now) != _date_second:
        _date_second = int(now)
        _date_line = b"Date: " + http.datetimeToString(now) + b"\r\n"
    return _date_line


def _ok(content_type: bytes, body: bytes) -> bytes:
    """A ``200 OK`` with the headers twisted.web gives it here."""
    return b"".join(
        (
            b"HTTP/1.1 200 OK\r\n",
            _SERVER,
            _date(),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\n\r\n" % len(body),
            body,
        )
    )


class BuilderRPC(XMLRPC):
    """``/rpc``: the builder's XML-RPC interface."""

    _log = Logger()

    def __init__(self, site: BuilderSite) -> None:
        super().__init__(allowNone=True)
        self._site = site
        self._builder = site.builder
        self._faults = site.faults
        self._history = site.history
        self._status_dict: dict[str, Any] | None = None
        self._status_bytes = b""

    def listProcedures(self) -> list[str]:
        return sorted(wire.PROCEDURES)

    def lookupProcedure(self, procedurePath: str) -> Callable[..., object]:
        if procedurePath not in wire.PROCEDURES:
            raise NoSuchFunction(_NOT_FOUND, f"procedure {procedurePath} not found")
        return partial(self._answer, procedurePath)

    def render(self, request: server.Request) -> bytes | int:
        if request.method != b"POST":
            return _not_allowed(request, b"POST")
        result: bytes | int = super().render(request)
        return result

    def render_POST(self, request: server.Request) -> bytes | int:
        faults = self._faults
        if faults.hang:
            self._record_hung(request)
            return server.NOT_DONE_YET
        if faults.blocking_downloads and self._builder.downloading:
            # the real daemon downloads synchronously: nothing else is answered meanwhile
            gone: list[Failure] = []
            request.notifyFinish().addErrback(gone.append)
            self._builder.downloads_over().addCallback(
                lambda _: None if gone else self._render_held(request)
            )
            return server.NOT_DONE_YET
        channel: Any = request.channel
        if faults.stale_connection and channel.answered:
            if self._drop_stale(request, faults.stale_connection, faults.stale_after_acting):
                return server.NOT_DONE_YET
        if faults.garbage is not None:
            return self._render_garbage(request, Garbage(faults.garbage))
        if faults.latency == 0:
            assert request.content is not None
            request.content.seek(0)
            if _noarg_method(request.content.read()) == "status":
                self._history.append(_STATUS_CALL)
                request.setHeader(b"content-type", _CONTENT_TYPE)
                return self._status()
        result: bytes | int = super().render_POST(request)
        return result

    def _render_held(self, request: server.Request) -> None:
        """Carry out a call held while the builder was downloading."""
        answer = self.render_POST(request)
        if isinstance(answer, bytes):
            request.write(answer)
            request.finish()

    def _status(self) -> bytes:
        """The serialised answer to ``status``, re-serialised only when it changed."""
        status = self._builder.status()
        if status is not self._status_dict:
            self._status_dict = status
            self._status_bytes = _dumps(status)
        return self._status_bytes

    def fast_answer(self, body: bytes) -> bytes | Deferred[bytes] | None:
        """The XML-RPC answer to the call in ``body`` (or a Deferred of it), for the fast
        path; ``None`` when the general path must take the call (a fault is switched on, the
        body is not a call of ours). Same records, same answers, same log lines."""
        faults = self._faults
        if (
            faults.hang
            or faults.garbage is not None
            or faults.latency
            or faults.stale_connection
            or faults.blocking_downloads
        ):
            return None
        if _noarg_method(body) == "status":
            self._history.append(_STATUS_CALL)
            return self._status()
        try:
            args, method = xmlrpc.client.loads(body)
        except Exception:
            return None
        if method not in wire.PROCEDURES or faults.withhold_answer.get(method, 0.0) > 0:
            return None
        self._history.append(RecordedCall(method, args))
        try:
            result = self._call(method, args)
        except Fault:
            return _ERROR_FAULT
        except Exception:
            self._log.failure(
                "{builder}: {method} failed", builder=self._builder.name, method=method
            )
            return _ERROR_FAULT
        if isinstance(result, Deferred):
            return result.addCallbacks(_dumps, self._failed_later, errbackArgs=(method,))
        return _dumps(result)

    def _failed_later(self, failure: Failure, method: str) -> bytes:
        if not failure.check(Fault, CancelledError):  # (cancelled: the farm is stopping)
            self._log.failure(
                "{builder}: {method} failed", failure, builder=self._builder.name, method=method
            )
        return _ERROR_FAULT

    def _answer(self, method: str, *args: object) -> object:
        self._history.append(RecordedCall(method, args))
        latency = self._faults.latency
        if latency > 0:
            d = self._site.delay(latency)
            d.addCallback(lambda _: self._call(method, args))
            d.addErrback(self._gone)
            return d
        withheld = self._faults.withhold_answer.get(method, 0.0)
        if withheld > 0:
            answer = self._call(method, args)
            d = self._site.delay(withheld)
            d.addCallback(lambda _: answer)
            d.addErrback(self._gone)
            return d
        return self._call(method, args)

    def _call(self, method: str, args: tuple[object, ...]) -> object:
        try:
            return self._builder.call(method, args)
        except wire.BadCall as e:
            self._log.warn(
                "{builder}: refused {method}: {reason}",
                builder=self._builder.name,
                method=method,
                reason=str(e),
            )
            raise Fault(_FAILURE, "error") from None

    @staticmethod
    def _gone(failure: Failure) -> Fault:
        failure.trap(CancelledError)
        return Fault(_FAILURE, "error")

    def _drop_stale(self, request: server.Request, counts: dict[str, int], act: bool) -> bool:
        """For a call counted in ``counts``: close the connection without an answer
        (carrying the call out first if ``act``). Whether it did."""
        assert request.content is not None
        request.content.seek(0)
        try:
            args, method = xmlrpc.client.loads(request.content.read())
        except Exception:
            return False
        if counts.get(str(method), 0) <= 0:
            return False
        counts[str(method)] -= 1
        if act:
            self._history.append(RecordedCall(str(method), tuple(args)))
            try:
                self._builder.call(str(method), tuple(args))
            except (wire.BadCall, KeyError):  # a refused call is dropped all the same
                pass
        channel: Any = request.channel
        if channel.transport is not None:
            channel.transport.loseConnection()
        return True

    def _record_hung(self, request: server.Request) -> None:
        assert request.content is not None
        request.content.seek(0)
        try:
            args, method = xmlrpc.client.loads(request.content.read())
        except Exception:  # garbage in, nothing recorded; the request hangs all the same
            return
        self._history.append(RecordedCall(str(method), tuple(args)))

    def _render_garbage(self, request: server.Request, kind: Garbage) -> int:
        """Carry the call out (if it is one), then answer with garbage of ``kind``."""
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        assert request.content is not None
        request.content.seek(0)
        method: str | None = None
        try:
            args, method = xmlrpc.client.loads(request.content.read())
            d = maybeDeferred(self.lookupProcedure(str(method)), *args)
        except Exception:  # not a call we can carry out: just the garbage then
            d = succeed(None)
        d.addErrback(lambda f: f.trap(Fault))
        d.addCallback(
            lambda _: None if gone else _write_garbage(request, kind, method, self._faults)
        )
        return server.NOT_DONE_YET


_BROKEN_XML = (
    b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n"
    b"<member>\n<name>builder_status</name>\n<value><string>BuilderStatus.ID\x00\xff<</"
)
_WRONG_TYPES_STATUS = _dumps({"builder_status": 1, "build_id": 2, "logtail": 3})
_WRONG_TYPES_OTHER = _dumps(42)
_HUGE_HEAD = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><string>"
_HUGE_TAIL = b"</string></value>\n</param>\n</params>\n</methodResponse>\n"


def _write_garbage(
    request: server.Request, kind: Garbage, method: str | None, faults: Faults
) -> None:
    request.setHeader(b"content-type", _CONTENT_TYPE)
    if kind is Garbage.HUGE:
        size = max(faults.huge_size, len(_HUGE_HEAD) + len(_HUGE_TAIL))
        request.setHeader(b"content-length", b"%d" % size)
        _HugeBody(request, size - len(_HUGE_HEAD) - len(_HUGE_TAIL)).start()
        return
    if kind is Garbage.XML:
        body = _BROKEN_XML
    else:
        body = _WRONG_TYPES_STATUS if method == "status" else _WRONG_TYPES_OTHER
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


@implementer(IPullProducer)
class _HugeBody:
    """Write a well-formed but huge XML-RPC answer, 64 KiB at a time."""

    _chunk = b"A" * 65536

    def __init__(self, request: server.Request, padding: int) -> None:
        self._request = request
        self._left = padding
        self._stopped = False

    def start(self) -> None:
        self._request.registerProducer(self, False)
        self._request.write(_HUGE_HEAD)

    def resumeProducing(self) -> None:
        if self._stopped:
            return
        if self._left > 0:
            chunk = self._chunk if self._left >= len(self._chunk) else self._chunk[: self._left]
            self._left -= len(chunk)
            self._request.write(chunk)
            return
        self._stopped = True
        self._request.unregisterProducer()
        self._request.write(_HUGE_TAIL)
        self._request.finish()

    def stopProducing(self) -> None:
        self._stopped = True


class _Hanging(Resource):
    """A resource that reads the request and never answers."""

    isLeaf = True

    def render(self, request: server.Request) -> int:
        return server.NOT_DONE_YET


def _not_found(request: server.Request) -> bytes:
    page: Any = pages.notFound()
    body: bytes = page.render(request)
    return body


def _not_allowed(request: server.Request, allowed: bytes) -> bytes:
    request.setHeader(b"allow", allowed)
    page: Any = pages.errorPage(http.NOT_ALLOWED, "Method Not Allowed", "Not allowed here.")
    body: bytes = page.render(request)
    return body


class _Root(Resource):
    """``/``: only ``/rpc`` and ``/filecache`` exist below it."""

    def getChild(self, path: bytes, request: server.Request) -> Any:
        return pages.notFound()

    def render(self, request: server.Request) -> bytes:
        return _not_found(request)


@implementer(IPullProducer)
class _FileBody:
    """Send an open file as a response body, 64 KiB at a time."""

    def __init__(self, request: server.Request, file: BinaryIO) -> None:
        self._request = request
        self._file = file

    def start(self) -> None:
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._file.closed:
            return
        chunk = self._file.read(65536)
        if chunk:
            self._request.write(chunk)
            return
        self._file.close()
        self._request.unregisterProducer()
        self._request.finish()

    def stopProducing(self) -> None:
        self._file.close()


class _CachedFile(Resource):
    """One file of the cache (or the build log), for GET and HEAD."""

    isLeaf = True

    def __init__(self, path: str, content_type: bytes) -> None:
        super().__init__()
        self._path = path
        self._content_type = content_type

    def render(self, request: server.Request) -> bytes | int:
        if request.postpath:
            return _not_found(request)
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request, b"GET, HEAD")
        try:
            file = open(self._path, "rb")
        except FileNotFoundError:  # cleaned away since we looked
            return _not_found(request)
        request.setHeader(b"content-type", self._content_type)
        request.setHeader(b"content-length", b"%d" % os.fstat(file.fileno()).st_size)
        if request.method == b"HEAD":
            file.close()
            return b""
        _FileBody(request, file).start()
        return server.NOT_DONE_YET


class FileCacheResource(Resource):
    """``/filecache/<sha1>`` and ``/filecache/buildlog``; 404 for anything else."""

    def __init__(self, builder: SimulatedBuilder, faults: Faults) -> None:
        super().__init__()
        self._builder = builder
        self._faults = faults

    def getChild(self, path: bytes, request: server.Request) -> Any:
        if self._faults.hang:
            return _Hanging()
        hostile = self._faults.hostile_results
        if hostile is not None:
            served = self._hostile_child(hostile, path)
            if served is not None:
                return served
        found = self._find(path)
        return pages.notFound() if found is None else _CachedFile(*found)

    def render(self, request: server.Request) -> bytes:
        return _not_found(request)

    def _find(self, name: bytes) -> tuple[str, bytes] | None:
        """``(path, content type)`` of ``/filecache/<name>``, ``None`` for a 404."""
        if name == b"buildlog":
            log_path = self._builder.log_path()
            return None if log_path is None else (log_path, b"text/plain; charset=utf-8")
        text = name.decode("ascii", "replace")
        if wire.is_sha1(text) and self._builder.cache.has(text):
            return str(self._builder.cache.path(text)), b"application/octet-stream"
        return None

    def fast_file(self, name: bytes) -> bytes | None:
        """The ``200`` answer for ``GET /filecache/<name>`` of a small file, for the fast
        path; ``None`` when the general path must answer (a 404, a fault, a large file)."""
        faults = self._faults
        found = None if faults.hang or faults.hostile_results is not None else self._find(name)
        if found is None:
            return None
        path, content_type = found
        try:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_size > _MAX_FAST_FILE:
                    return None
                data = file.read()
        except FileNotFoundError:  # cleaned away since we looked
            return None
        return _ok(content_type, data)

    def _hostile_child(self, hostile: str, path: bytes) -> Resource | None:
        name = path.decode("ascii", "replace")
        if hostile == Hostile.BAD_SHA1 and name == artifacts.BAD_SHA1:
            return _Bytes(artifacts.BAD_SHA1_BYTES)
        if hostile == Hostile.HUGE_LOG and path == b"buildlog" and self._builder.log_path():
            return _Endless(b"a very chatty build log line, over and over again\n" * 1000)
        if hostile == Hostile.ENDLESS_FILE and wire.is_sha1(name) and path != b"buildlog":
            status = self._builder.status()
            if name in (status.get("filemap") or {}).values():
                return _Endless(b"\0" * 65536)
        return None


class _Bytes(Resource):
    """Fixed bytes."""

    isLeaf = True

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = data

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        return self._data


class _Endless(Resource):
    """A body that never ends (no Content-Length: chunked, forever)."""

    isLeaf = True

    def __init__(self, chunk: bytes) -> None:
        super().__init__()
        self._chunk = chunk

    def render(self, request: server.Request) -> int:
        request.setHeader(b"content-type", b"application/octet-stream")
        _EndlessBody(request, self._chunk).start()
        return server.NOT_DONE_YET


@implementer(IPullProducer)
class _EndlessBody:
    def __init__(self, request: server.Request, chunk: bytes) -> None:
        self._request = request
        self._chunk = chunk
        self._stopped = False

    def start(self) -> None:
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if not self._stopped:
            self._request.write(self._chunk)

    def stopProducing(self) -> None:
        self._stopped = True


class _TrackedChannel(http.HTTPChannel):
    """An HTTP connection its site can find again, to drop it; it answers the plain
    requests itself (the fast path) until one needs twisted.web."""

    site: BuilderSite
    #: requests answered over this connection (more than none: it is a kept-alive one)
    answered = 0
    #: twisted.web has the connection (from the first request the fast path left to it)
    _general = False
    #: an answer is on its way (later requests wait for it)
    _waiting = False
    #: reading stopped: too much piled up behind the answer on its way
    _paused = False
    _gone = False
    _inbox = b""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._general:
            super().dataReceived(data)
            return
        self.resetTimeout()
        self._inbox += data
        if self._waiting and len(self._inbox) > _MAX_FAST_HEAD + _MAX_FAST_BODY:
            # a client piling requests up behind an answer that waits: read no more for
            # now (reading on while an answer waits is how a client gone is noticed)
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._serve()

    def _serve(self) -> None:
        while self._inbox and not (self._waiting or self._general or self._gone):
            request = _parse_request(self._inbox)
            if request is _INCOMPLETE:
                return
            if request is _GENERAL or not self.site.fast_path:
                answer = None
            else:
                answer = self.site.fast_response(request)
            if answer is None:
                self._general = True
                data, self._inbox = self._inbox, b""
                super().dataReceived(data)
                return
            self._inbox = self._inbox[request.end :]
            if isinstance(answer, bytes):
                self._send(answer)
                continue
            self._waiting = True
            answer.addCallback(self._answered_later)

    def _send(self, answer: bytes) -> None:
        self.answered += 1
        self.site.fast_answered += 1
        transport: Any = self.transport
        transport.write(answer)

    def _answered_later(self, answer: bytes) -> None:
        self._waiting = False
        if self._gone:
            return
        self._send(answer)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._serve()

    def requestDone(self, request: http.Request) -> None:
        self.answered += 1
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._gone = True
        super().connectionLost(reason)
        self.site.channel_gone(self)


class BuilderSite(server.Site):
    """One builder's web site: ``/rpc`` and ``/filecache``, no access log.

    It keeps track of its open connections and of the answers delayed by ``latency``, so
    that :meth:`disconnect_all` can drop them all when the builder stops listening.
    """

    protocol = _TrackedChannel  # type: ignore[assignment]
    noisy = False
    #: whether connections answer the plain requests themselves (see the module docstring);
    #: ``False`` sends every request through twisted.web
    fast_path = True
    #: requests the fast path answered
    fast_answered = 0

    def __init__(
        self,
        builder: SimulatedBuilder,
        history: deque[RecordedCall],
        reactor: Any,
    ) -> None:
        self.builder = builder
        self.faults = builder.faults
        self.history = history
        self.clock = builder.clock
        self.channels: set[_TrackedChannel] = set()
        self._delays: dict[Deferred[None], Any] = {}
        self._all_gone: list[Deferred[None]] = []
        root = _Root()
        self._rpc = BuilderRPC(self)
        self._filecache = FileCacheResource(builder, builder.faults)
        rpc: Any = self._rpc
        filecache: Any = self._filecache
        root.putChild(b"rpc", rpc)
        root.putChild(b"filecache", filecache)
        # No form parsing: it costs more than the rest of a status call (email parser).
        super().__init__(root, reactor=reactor, parsePOSTFormSubmission=False)

    def startFactory(self) -> None:
        """No access log, hence no per-site timer keeping its date string fresh."""

    def log(self, request: http.Request) -> None:
        """No access log."""

    def fast_response(self, request: _Request) -> bytes | Deferred[bytes] | None:
        """The whole HTTP answer to ``request`` (or a Deferred of it) when the fast path
        may give it, else ``None`` (before anything was done or recorded)."""
        if request.method == b"POST":
            if request.target != b"/rpc":
                return None
            answer = self._rpc.fast_answer(request.body)
            if isinstance(answer, Deferred):
                return answer.addCallback(partial(_ok, _CONTENT_TYPE))
            return None if answer is None else _ok(_CONTENT_TYPE, answer)
        prefix = b"/filecache/"
        name = request.target[len(prefix) :]
        if not (request.target.startswith(prefix) and name.isalnum()):
            return None
        return self._filecache.fast_file(name)

    def delay(self, seconds: float) -> Deferred[None]:
        """Fire after ``seconds`` on the builder's clock; cancelled by :meth:`disconnect_all`."""

        def cancel(d: Deferred[None]) -> None:
            call = self._delays.pop(d, None)
            if call is not None and call.active():
                call.cancel()

        d: Deferred[None] = Deferred(cancel)

        def fire() -> None:
            del self._delays[d]
            d.callback(None)

        self._delays[d] = self.clock.callLater(seconds, fire)
        return d

    def channel_gone(self, channel: _TrackedChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._all_gone = self._all_gone, []
            for d in waiting:
                d.callback(None)

    def disconnect_all(self) -> Deferred[None]:
        """Drop every connection and delayed answer; fire when all connections are gone."""
        for d in list(self._delays):
            d.cancel()
        if not self.channels:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._all_gone.append(done)
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()
        return done
