"""A small, strict, non-blocking HTTP/1.1 client for talking to builders.

Long: an HTTP/1.1 client for untrusted peers: the parser, its bounds, the connection pool and
the deadlines are checked together, and one module keeps every limit in sight.

Builders are untrusted: every response is bounded (head size, body size, chunk sizes) and
every request has a deadline on the injected clock. Connections to a builder are kept alive
and reused (a builder is polled every few seconds; reusing the connection makes a status
poll about three times cheaper than a new connection per call, as
``twisted.web.xmlrpc.Proxy`` does).

A body is either collected in memory (bounded by ``max_body``) or streamed to a ``sink``
callable as it arrives; when the sink returns a Deferred, reading from the socket pauses
until it fires (so a slow disk never makes the master buffer a 10 GB log).

Framing is strict, so that a cut or ambiguous answer is an error and never a short body
taken for a whole one: a body is framed by one ``Content-Length``, or by chunked transfer
coding, or (neither) by the peer closing the connection cleanly; a reset, or a deadline,
before that clean close is an error. Refused: ``Content-Length`` together with
``Transfer-Encoding``, more than one ``Content-Length``, any transfer coding but
``chunked`` (and chunked in an HTTP/1.0 answer), a line ending that is not CRLF, control
characters in the status line, anything but hex digits and well-formed extensions on a
chunk-size line (at most :data:`MAX_CHUNK_LINE` bytes), a trailer section over :data:`MAX_TRAILER`
bytes, interim answers other than ``100 Continue`` (``101 Switching Protocols``
included), and a status line that is not ``HTTP/1.0`` or ``HTTP/1.1``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "HTTPClient",
    "Response",
    "HTTPError",
    "ResponseTooLarge",
    "MalformedResponse",
    "RequestTimeout",
    "ConnectionClosed",
    "StaleConnection",
]

Sink = Callable[[bytes], "defer.Deferred[None] | None"]

#: the largest response head (status line and header fields) accepted
MAX_HEAD = 64 * 1024
#: the longest chunk-size line (the size and its extensions) accepted
MAX_CHUNK_LINE = 1024
#: the largest trailer section of a chunked body (all its lines together)
MAX_TRAILER = 8 * 1024
#: ``100 Continue`` answers accepted before the real one
MAX_INTERIM = 4

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FIELD_NAME = re.compile(_TOKEN)
#: a chunk size in hex and its extensions (RFC 9112 7.1.1: ``;name`` or ``;name=value``,
#: the value a token or a quoted string, optional whitespace around ``;`` and ``=``)
_CHUNK_SIZE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|"
    rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"))?)*)'
    % (_TOKEN, _TOKEN)
)
#: a CR not before an LF, an LF not after a CR (a head's lines end with CRLF, nothing else)
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
#: the same, in a head not complete yet (it may end between the CR and the LF)
_BARE_EOL_SO_FAR = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")


class HTTPError(Exception):
    """The exchange failed (our own type for everything that can go wrong in it)."""


class MalformedResponse(HTTPError):
    """The peer's answer is not valid HTTP."""


class ResponseTooLarge(HTTPError):
    """The peer's answer is bigger than we accept."""


class RequestTimeout(HTTPError):
    """No complete answer in time: before the deadline, or (with an ``idle_timeout`` or a
    ``min_rate``) the peer went quiet or was too slow; the message says which."""

    def __init__(self, seconds: float, message: str | None = None) -> None:
        super().__init__(message or f"timeout after {seconds:g} seconds")
        self.seconds = seconds


class _SinkFailed(Exception):
    """The sink refused a piece of the body (its failure ends the request)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure.value))
        self.failure = failure


class ConnectionClosed(HTTPError):
    """The peer closed the connection before answering completely.

    ``partial``: some of the answer had arrived.
    """

    def __init__(self, message: str, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


class StaleConnection(ConnectionClosed):
    """A kept-alive connection was closed by the peer before any byte of the answer came.

    Usually the peer had closed it while it was idle (it restarted, or timed the connection
    out) and never saw the request; but a peer that died while acting on the request looks
    the same from here. Raised only for requests that may not be sent again by themselves
    (``retry=False``): the caller has to find out which it was.
    """


@attrs.frozen
class Response:
    status: int
    reason: str
    headers: dict[bytes, bytes]
    body: bytes | None  # None when streamed to a sink
    length: int  # body bytes received


@attrs.define
class _Request:
    method: bytes
    head: bytes
    body: bytes
    max_body: int
    sink: Sink | None
    deferred: defer.Deferred[Response]
    #: told of every byte and every wait for the sink (requests with a pace only)
    watch: _Watchdog | None = None


class _Watchdog:
    """When an exchange has taken too long.

    Without a pace: ``timeout`` seconds after ``start``. With ``min_rate`` (bytes a second),
    the deadline moves ``1 / min_rate`` seconds later with every byte that arrives: the
    exchange may take ``timeout`` plus its bytes at ``min_rate``, and a peer that trickles
    is cut after ``timeout`` whatever size it announced. With ``idle_timeout``, no byte for
    that long ends it too. Time spent waiting for the sink (our side, not the peer's) counts
    for neither. ``expired`` says why it ended the exchange (by calling ``abort``).
    """

    _SLACK = 1e-6  # seconds of float rounding between a call's time and its deadline
    __slots__ = (
        "_abort",
        "_call",
        "_clock",
        "_idle",
        "_last",
        "_paused",
        "_paused_since",
        "_rate",
        "_start",
        "_timeout",
        "expired",
        "received",
    )

    def __init__(
        self,
        clock: Any,
        start: float,
        timeout: float,
        idle_timeout: float | None,
        min_rate: float | None,
        abort: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._start = self._last = start
        self._timeout = timeout
        self._idle = idle_timeout
        self._rate = min_rate
        self._abort = abort
        self._paused_since: float | None = None
        self._paused = 0.0
        self.received = 0
        self.expired: RequestTimeout | None = None
        self._call = clock.callLater(max(self._due() - clock.seconds(), 0.0), self._check)

    def _deadline(self) -> float:
        deadline = self._start + self._timeout + self._paused
        if self._rate:
            deadline += self.received / self._rate
        return deadline

    def _due(self) -> float:
        due = self._deadline()
        if self._idle is not None:
            due = min(due, self._last + self._idle)
        return due

    def _check(self) -> None:
        now = self._clock.seconds()
        if self._paused_since is not None:  # our sink is busy: look again later
            self._call = self._clock.callLater(self._idle or self._timeout, self._check)
            return
        elapsed = now - self._start - self._paused
        if self._idle is not None and now - self._last >= self._idle - self._SLACK:
            self._expire(RequestTimeout(elapsed, f"no data for {self._idle:g} seconds"))
        elif now >= self._deadline() - self._SLACK:
            if self._rate:
                message = (
                    f"slower than {self._rate:g} bytes a second"
                    f" ({self.received} bytes in {elapsed:.0f} seconds)"
                )
                self._expire(RequestTimeout(elapsed, message))
            else:
                self._expire(RequestTimeout(self._timeout))
        else:
            self._call = self._clock.callLater(max(self._due() - now, 0.0), self._check)

    def _expire(self, reason: RequestTimeout) -> None:
        self.expired = reason
        self._abort()

    def progress(self, size: int) -> None:
        """``size`` bytes arrived."""
        self.received += size
        self._last = self._clock.seconds()

    def pause(self) -> None:
        """Reading waits for the sink."""
        self._paused_since = self._clock.seconds()

    def resume(self) -> None:
        """The sink is ready for more."""
        if self._paused_since is not None:
            now = self._clock.seconds()
            self._paused += now - self._paused_since
            self._paused_since = None
            self._last = now

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class _HTTPClientProtocol(protocol.Protocol):
    """One connection; one request at a time."""

    transport: Any  # an ITCPTransport once connected

    def __init__(self) -> None:
        self._request: _Request | None = None
        self._buffer = bytearray()
        self._state = "idle"
        self._status = 0
        self._reason = ""
        self._headers: dict[bytes, bytes] = {}
        self._keep_alive = False
        self._remaining = 0  # bytes left in the body (LENGTH) or in the chunk (CHUNK_DATA)
        self._received = 0
        self._body = bytearray()
        self._waiting_sink = False
        self._connected = False
        self._aborted = False
        self._any_data = False  # some of the answer came
        self._eof = False  # the peer closed cleanly while a sink was still writing
        self._scanned = 0  # bytes of an incomplete head already looked at
        self._interim = 0  # 100 Continue answers so far
        self._trailer = 0  # bytes of trailer section so far
        self.key: tuple[str, int] = ("", 0)  # (host, port), set by the client
        self.reuse = True  # whether the client keeps the connection after this request
        self.timed_out = False  # the request's plain deadline passed (see :meth:`expire`)
        self.on_connected: Callable[[_HTTPClientProtocol], None] | None = None
        self.on_idle: Callable[[_HTTPClientProtocol], None] | None = None
        self.on_lost: Callable[[_HTTPClientProtocol], None] | None = None

    # -- the pool's side --------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        if self.on_connected is not None:
            self.on_connected(self)

    @property
    def available(self) -> bool:
        return self._connected and self._request is None

    def send(self, request: _Request) -> None:
        assert self._request is None, "one request at a time"
        self._request = request
        self._state = "status"
        self._buffer.clear()
        self._headers = {}
        self._received = 0
        self._body = bytearray()
        self._any_data = False  # (the rest of the state is clean after a complete answer)
        self.timed_out = False
        self.transport.write(request.head + request.body)

    def abort(self) -> None:
        if self.transport is not None:
            self._aborted = True
            self.transport.abortConnection()

    def expire(self) -> None:
        """The request's deadline passed: end it (as a timeout)."""
        self.timed_out = True
        self.abort()

    def cancel(self, _: object) -> None:
        """The request's Deferred was cancelled: that aborts the connection."""
        self.abort()

    # -- parsing ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._request is None:
            # bytes nobody asked for: a broken or hostile peer; never reuse this connection
            self.transport.abortConnection()
            return
        self._any_data = True
        if self._request.watch is not None:
            self._request.watch.progress(len(data))
        self._buffer += data
        self._parse_or_fail()

    def _parse_or_fail(self) -> None:
        try:
            self._parse()
        except HTTPError as e:
            self._fail(Failure(e))
            self.transport.abortConnection()
        except _SinkFailed as e:
            self._fail(e.failure)
            self.transport.abortConnection()

    def _parse(self) -> None:
        while self._request is not None and not self._waiting_sink:
            state = self._state
            if state == "status":
                if not self._parse_head():
                    return
            elif state == "length" or state == "chunk_data":
                if not self._buffer:
                    return
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                self._deliver(piece)
                if self._remaining == 0:
                    if state == "length":
                        self._finish()
                    else:
                        self._state = "chunk_end"
            elif state == "chunk_size":
                line = self._take_line(MAX_CHUNK_LINE, "chunk-size line")
                if line is None:
                    return
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise MalformedResponse(f"bad chunk size line {line[:40]!r}")
                self._remaining = int(match.group(1), 16)
                if self._received + self._remaining > self._request.max_body:
                    raise ResponseTooLarge(
                        f"response body exceeds the limit of {self._request.max_body} bytes"
                    )
                if self._remaining:
                    self._state = "chunk_data"
                else:
                    self._state, self._trailer = "trailer", 0
            elif state == "chunk_end":
                if len(self._buffer) < 2:
                    if self._buffer and self._buffer[0] != 13:
                        raise MalformedResponse("chunk data not followed by CRLF")
                    return
                if self._buffer[:2] != b"\r\n":
                    raise MalformedResponse("chunk data not followed by CRLF")
                del self._buffer[:2]
                self._state = "chunk_size"
            elif state == "trailer":
                left = max(MAX_TRAILER - self._trailer - 2, 0)  # (each line ends with CRLF)
                line = self._take_line(left, "trailer section", ResponseTooLarge)
                if line is None:
                    return
                if not line:
                    self._finish()
                    return
                self._trailer += len(line) + 2
                name, colon, _ = line.partition(b":")
                if not colon or not _FIELD_NAME.fullmatch(name):
                    raise MalformedResponse(f"bad trailer line {line[:80]!r}")
            elif state == "until_close":
                if not self._buffer:
                    return
                piece = bytes(self._buffer)
                self._buffer.clear()
                self._deliver(piece)
            else:  # pragma: no cover - no other states
                raise AssertionError(self._state)

    def _take_line(
        self, limit: int, what: str, too_long: type[HTTPError] = MalformedResponse
    ) -> bytes | None:
        """The next line (without its CRLF), ``None`` while incomplete. A line ends with
        CRLF and nothing else, and holds at most ``limit`` bytes."""
        buffer = self._buffer
        end = buffer.find(b"\n", 0, limit + 2)
        if end < 0:
            if len(buffer) > limit + 1:
                raise too_long(f"{what} too long (more than {limit} bytes)")
            return None
        if end == 0 or buffer[end - 1] != 13:
            raise MalformedResponse(f"bare LF line ending in the {what}")
        line = bytes(buffer[: end - 1])
        del buffer[: end + 1]
        if b"\r" in line:
            raise MalformedResponse(f"bare CR in the {what}")
        return line

    def _parse_head(self) -> bool:
        """Parse the response head once it is complete; whether it was."""
        buffer = self._buffer
        scanned = self._scanned
        end = buffer.find(b"\r\n\r\n", scanned - 3 if scanned > 3 else 0)
        if end < 0:
            if _BARE_EOL_SO_FAR.search(buffer, scanned - 1 if scanned > 1 else 0):
                raise MalformedResponse("a bare CR or LF line ending in the response head")
            if len(buffer) > MAX_HEAD:
                raise ResponseTooLarge("response head larger than 64 KiB")
            self._scanned = len(buffer)
            return False
        if end > MAX_HEAD:
            raise ResponseTooLarge("response head larger than 64 KiB")
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        self._scanned = 0
        lines = head.split(b"\r\n")
        # every CR and LF is one of the CRLFs between lines (counting them is cheap)
        breaks = len(lines) - 1
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
            raise MalformedResponse("a bare CR or LF line ending in the response head")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise MalformedResponse(f"bad status line {lines[0][:80]!r}")
        minor, status, reason = match.groups()
        self._status = int(status)
        self._reason = (reason or b"").decode("latin-1")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _FIELD_NAME.fullmatch(name):
                raise MalformedResponse(f"bad header line {line[:80]!r}")
            key = name.lower()
            value = value.strip(b" \t")
            if key in headers:
                if key == b"content-length":
                    raise MalformedResponse("more than one Content-Length")
                headers[key] += b", " + value
            else:
                headers[key] = value
        self._headers = headers
        if self._status < 200:  # an interim answer: the real one follows
            if self._status != 100:
                raise MalformedResponse(f"interim answer {self._status} refused")
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise MalformedResponse(f"more than {MAX_INTERIM} interim answers")
            return True
        self._interim = 0
        connection = headers.get(b"connection")
        self._keep_alive = minor == b"1" and not (
            connection is not None
            and b"close" in (token.strip(b" \t").lower() for token in connection.split(b","))
        )
        request = self._request
        assert request is not None
        if request.method == b"HEAD" or self._status in (204, 304):
            self._finish()
            return True
        encoding = headers.get(b"transfer-encoding")
        length = headers.get(b"content-length")
        if encoding is not None:
            if length is not None:
                raise MalformedResponse("both Content-Length and Transfer-Encoding")
            if minor == b"0":
                raise MalformedResponse("Transfer-Encoding in an HTTP/1.0 answer")
            if encoding.lower() != b"chunked":
                raise MalformedResponse(f"unsupported Transfer-Encoding {encoding[:40]!r}")
            self._state = "chunk_size"
        elif length is not None:
            if not length.isdigit() or len(length) > 18:
                raise MalformedResponse(f"bad Content-Length {length[:40]!r}")
            self._remaining = int(length)
            if self._remaining > request.max_body:
                raise ResponseTooLarge(
                    f"response body of {self._remaining} bytes exceeds the limit of"
                    f" {request.max_body}"
                )
            self._state = "length"
            if self._remaining == 0:
                self._finish()
        else:  # the body ends when the peer closes the connection, cleanly
            self._keep_alive = False
            self._state = "until_close"
        return True

    def _deliver(self, piece: bytes) -> None:
        assert self._request is not None
        self._received += len(piece)
        if self._received > self._request.max_body:
            raise ResponseTooLarge(
                f"response body exceeds the limit of {self._request.max_body} bytes"
            )
        if self._request.sink is None:
            self._body += piece
            return
        try:
            result = self._request.sink(piece)
        except Exception:  # the sink refused the piece: that ends the request
            raise _SinkFailed(Failure()) from None
        if isinstance(result, defer.Deferred):
            if result.called:
                # ready already: carry on here (waiting on it would recurse, piece by piece)
                failed: list[Failure] = []
                result.addErrback(failed.append)
                if failed:
                    raise _SinkFailed(failed[0])
                return
            self._waiting_sink = True
            self.transport.pauseProducing()
            if self._request.watch is not None:
                self._request.watch.pause()
            result.addCallbacks(self._sink_ready, self._sink_failed)

    def _sink_ready(self, _: object) -> None:
        self._waiting_sink = False
        if self._request is None:
            return
        if self._request.watch is not None:
            self._request.watch.resume()
        self.transport.resumeProducing()
        self._parse_or_fail()
        if self._eof and self._request is not None and not self._waiting_sink:
            self._finish()  # the peer had closed cleanly: the body is complete

    def _sink_failed(self, failure: Failure) -> None:
        self._waiting_sink = False
        self._fail(failure)
        self.transport.abortConnection()

    def _finish(self) -> None:
        request, self._request = self._request, None
        assert request is not None
        self._state = "idle"
        response = Response(
            status=self._status,
            reason=self._reason,
            headers=self._headers,
            body=bytes(self._body) if request.sink is None else None,
            length=self._received,
        )
        self._body = bytearray()
        if self._buffer or not self._keep_alive:
            self.transport.loseConnection()
        elif self.on_idle is not None:
            self.on_idle(self)
        request.deferred.callback(response)

    def _fail(self, failure: Failure) -> None:
        request, self._request = self._request, None
        self._state = "idle"
        if request is not None and not request.deferred.called:
            request.deferred.errback(failure)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._connected = False
        if self.on_lost is not None:
            self.on_lost(self)
        if self._request is None:
            return
        if (
            self._state == "until_close"
            and not self._aborted
            and reason.check(error.ConnectionDone) is not None
        ):
            # a clean close ends such a body; a reset, or our own abort (a deadline), cuts it
            if self._waiting_sink:
                self._eof = True
            else:
                self._finish()
            return
        got_nothing = not self._any_data
        self._fail(
            Failure(
                ConnectionClosed(
                    "connection closed before a complete answer"
                    + ("" if got_nothing else " (partial response)"),
                    partial=not got_nothing,
                )
            )
        )


class _Factory(protocol.ClientFactory):
    """Builds one protocol and fires ``connected`` with it once it is connected."""

    noisy = False  # one per connection: "Starting factory" lines would flood the log

    def __init__(self, connected: defer.Deferred[_HTTPClientProtocol]) -> None:
        self._connected = connected

    def buildProtocol(self, addr: Any) -> _HTTPClientProtocol:
        p = _HTTPClientProtocol()
        p.factory = self
        p.on_connected = self._made
        return p

    def _made(self, p: _HTTPClientProtocol) -> None:
        if self._connected.called:  # too late: the deadline passed while connecting
            p.abort()
        else:
            self._connected.callback(p)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._connected.called:
            self._connected.errback(reason)


@functools.lru_cache(maxsize=8192)
def _target(url: str) -> tuple[str, int, bytes, bytes]:
    """``(host, port, request path, Host header line)`` of an http:// URL (cached: the same
    few URLs are asked for over and over)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HTTPError(f"unsupported URL {url!r} (only http:// is supported)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = b"Host: " + parts.netloc.rsplit("@", 1)[-1].encode("ascii")
    return parts.hostname, parts.port or 80, path.encode("ascii"), host_header


@functools.lru_cache(maxsize=8192)
def _head_parts(
    method: bytes, url: str, headers: tuple[tuple[bytes, bytes], ...], user_agent: bytes | None
) -> tuple[str, int, bytes, bytes]:
    """``(host, port, before, after)``: a request's head is ``before``, the body's length in
    decimal, ``after`` (cached: the builder client sends the same few heads over and over)."""
    host, port, path, host_header = _target(url)
    after = b"".join(b"\r\n" + name + b": " + value for name, value in headers)
    if user_agent is not None:
        after += b"\r\nUser-Agent: " + user_agent
    before = method + b" " + path + b" HTTP/1.1\r\n" + host_header + b"\r\nContent-Length: "
    return host, port, before, after + b"\r\n\r\n"


class HTTPClient:
    """Requests over kept-alive connections, with deadlines and size limits.

    :param reactor: provides IReactorTCP (and IReactorTime, unless ``clock`` is given).
    :param max_idle_per_host: connections kept open per (host, port) between requests.
    :param clock: the IReactorTime the deadlines run on (default: ``reactor``).
    :param user_agent: sent as ``User-Agent`` with every request.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        max_idle_per_host: int = 4,
        clock: Any = None,
        user_agent: bytes | None = None,
    ) -> None:
        self._reactor = reactor  # IReactorTCP
        self._user_agent = user_agent
        self.clock = reactor if clock is None else clock
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_HTTPClientProtocol]] = {}
        self._all: set[_HTTPClientProtocol] = set()
        self._on_idle = self._idle_after  # (one bound method for every request)

    async def request(
        self,
        method: bytes,
        url: str,
        body: bytes = b"",
        headers: dict[bytes, bytes] | None = None,
        timeout: float = 30.0,
        max_body: int = 1024 * 1024,
        sink: Sink | None = None,
        reuse: bool = True,
        retry: bool = True,
        idle_timeout: float | None = None,
        min_rate: float | None = None,
    ) -> Response:
        """Send one request and return its response.

        :param timeout: seconds (on the injected clock) for the whole exchange, connecting
            included; with ``min_rate``, the time it may take beyond what its bytes earn.
        :param idle_timeout: fail the exchange when no byte comes for this many seconds.
        :param min_rate: bytes a second: every byte that arrives moves the deadline
            ``1 / min_rate`` seconds later (for long downloads: a transfer of any size
            that keeps this pace is never cut, one that trickles is). Time spent waiting
            for ``sink`` counts against neither.
        :param max_body: the largest response body accepted (:class:`ResponseTooLarge`).
        :param sink: receives the body in pieces instead of collecting it in memory.
        :param reuse: whether a kept-alive connection may carry this request (``False``:
            a new connection, closed after the answer).
        :param retry: whether the request may be sent again, over a new connection, when
            the kept-alive connection it went out on turns out closed by the peer. Pass
            ``False`` for requests that must not run twice: such a connection then fails
            the request with :class:`StaleConnection` (nothing of the answer came) or
            :class:`ConnectionClosed` (part of it came).
        (A coroutine: await it, or wrap it with ``Deferred.fromCoroutine``.)

        :returns: a :class:`Response` (any status code).
        :raises: :class:`HTTPError` subclasses, ``twisted.internet.error.ConnectError``
            subclasses (e.g. ``ConnectionRefusedError``), or :class:`RequestTimeout`.
        """
        host, port, before, after = _head_parts(
            method, url, tuple(headers.items()) if headers else (), self._user_agent
        )
        head = before + str(len(body)).encode("ascii") + after
        start = self.clock.seconds()
        deadline = start + timeout
        pace = (idle_timeout, min_rate)

        attempts = 2 if reuse and retry and sink is None else 1
        for attempt in range(attempts):
            conn = self._take_idle(host, port) if reuse and attempt == 0 else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = await self._connect(
                        host, port, max(deadline - self.clock.seconds(), 0.001), timeout
                    )
                return await self._exchange(
                    conn,
                    method,
                    head,
                    body,
                    max_body,
                    sink,
                    start,
                    timeout,
                    pace,
                    (host, port),
                    reuse,
                )
            except ConnectionClosed as e:
                if not reused:
                    raise
                # a kept-alive connection the peer had closed meanwhile: the others to the
                # same peer are most likely gone too
                self._drop_idle((host, port))
                if attempt + 1 < attempts:
                    continue  # try a fresh one
                if not e.partial and not retry:
                    raise StaleConnection(str(e)) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_idle(self, host: str, port: int) -> _HTTPClientProtocol | None:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if conn.available:
                return conn
        return None

    async def _connect(
        self, host: str, port: int, remaining: float, timeout: float
    ) -> _HTTPClientProtocol:
        connecting: list[Any] = []

        def stop() -> None:
            if connecting and connecting[0].state == "connecting":
                connecting[0].stopConnecting()

        # cancelling the request stops the connection attempt
        connected: defer.Deferred[_HTTPClientProtocol] = defer.Deferred(lambda d: stop())
        factory = _Factory(connected)
        connecting.append(
            self._reactor.connectTCP(host, port, factory, timeout=max(int(remaining + 0.999), 1))
        )

        def expire() -> None:
            if not connected.called:
                connected.errback(RequestTimeout(timeout))
            stop()

        timer = self.clock.callLater(remaining, expire)
        try:
            conn = await connected
        finally:
            if timer.active():
                timer.cancel()
        if not conn.available:  # pragma: no cover - lost between connect and now
            raise ConnectionClosed("connection closed before a complete answer")
        self._all.add(conn)
        return conn

    async def _exchange(
        self,
        conn: _HTTPClientProtocol,
        method: bytes,
        head: bytes,
        body: bytes,
        max_body: int,
        sink: Sink | None,
        start: float,
        timeout: float,
        pace: tuple[float | None, float | None],
        key: tuple[str, int],
        reuse: bool,
    ) -> Response:
        # cancelling the request aborts its connection
        done: defer.Deferred[Response] = defer.Deferred(conn.cancel)
        request = _Request(method, head, body, max_body, sink, done)
        timer: Any = None
        if pace == (None, None):  # a plain deadline (every XML-RPC call): the cheap timer
            timer = self.clock.callLater(
                max(start + timeout - self.clock.seconds(), 0.0), conn.expire
            )
        else:
            request.watch = _Watchdog(self.clock, start, timeout, *pace, conn.abort)
        conn.key = key
        conn.reuse = reuse
        conn.on_idle = self._on_idle
        conn.on_lost = self._forget
        conn.send(request)
        try:
            return await done
        except ConnectionClosed:
            if conn.timed_out:
                raise RequestTimeout(timeout) from None
            if request.watch is not None and request.watch.expired is not None:
                raise request.watch.expired from None
            raise
        finally:
            if timer is not None:
                if timer.active():
                    timer.cancel()
            elif request.watch is not None:
                request.watch.cancel()

    def _idle_after(self, conn: _HTTPClientProtocol) -> None:
        """A connection's answer is complete: keep it for the next request, or close it."""
        if conn.reuse:
            self._keep(conn.key, conn)
        else:
            conn.transport.loseConnection()

    def _keep(self, key: tuple[str, int], conn: _HTTPClientProtocol) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            conn.transport.loseConnection()
        else:
            idle.append(conn)

    def _drop_idle(self, key: tuple[str, int]) -> None:
        for conn in self._idle.pop(key, []):
            conn.transport.loseConnection()

    def _forget(self, conn: _HTTPClientProtocol) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def close_idle(self, url: str | None = None) -> None:
        """Close the kept-alive connections (to the host and port of ``url``, or all of
        them); requests in flight are not affected."""
        if url is not None:
            host, port, _, _ = _target(url)
            self._drop_idle((host, port))
            return
        for key in list(self._idle):
            self._drop_idle(key)

    def abort_all(self) -> None:
        """Abort every connection, including requests in flight (on shutdown)."""
        self._idle.clear()
        for conn in list(self._all):
            conn.abort()
