"""The builder HTTP client on the wire: exact response bytes from a raw server on 127.0.0.1.

Every answer is either the body exactly as it was framed (Content-Length, chunked, or read
to a clean close) or one of the client's own errors: a cut body, ambiguous framing and
malformed lines are refused, never returned as a success. Deadlines run on a task.Clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from rawhttp import RawConnection, RawServer
from twisted.internet import defer
from twisted.internet.task import Clock

from buildmaster.httpclient import (
    MAX_TRAILER,
    ConnectionClosed,
    HTTPClient,
    HTTPError,
    MalformedResponse,
    RequestTimeout,
    ResponseTooLarge,
)
from buildmaster.testing import wait_for

OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"
PAD = b"X-Pad: " + b"p" * 119 + b"\r\n"  # 128 bytes
MAX_BODY = 1000


@attrs.frozen
class Case:
    name: str
    answer: bytes
    #: how the server ends: "close" (FIN), "reset" (RST), "hold" (open: the deadline ends it)
    ending: str
    #: the body the client must return, or the error it must raise
    expected: bytes | type[HTTPError]
    #: words the error's message must contain
    says: str = ""
    #: the part of the body that arrives before the deadline cuts it
    arrives: bytes = b""


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


CASES = [
    # -- well framed: the body, exactly -------------------------------------------------
    Case("length", OK + b"Content-Length: 5\r\n\r\nhello", "hold", b"hello"),
    Case("length zero", OK + b"Content-Length: 0\r\n\r\n", "hold", b""),
    Case(
        "chunked",
        OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"hel", b"lo"),
        "hold",
        b"hello",
    ),
    Case(
        "chunk extensions and a trailer",
        OK
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b'5;name=value;quoted="a;b\\"c"\r\nhello\r\n3 ; bare\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n',
        "hold",
        b"helloabc",
    ),
    Case("read to a clean close", OK + b"Content-Type: text/plain\r\n\r\nhello", "close", b"hello"),
    Case("HTTP/1.0 read to close", b"HTTP/1.0 200 OK\r\n\r\nhello", "close", b"hello"),
    Case(
        "100 Continue first",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nhi",
        "hold",
        b"hi",
    ),
    Case(
        "a status line without a reason",
        b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        b"hi",
    ),
    Case("tabs and spaces around values", OK + b"Content-Length: \t2 \r\n\r\nhi", "hold", b"hi"),
    Case("more bytes than the length", OK + b"Content-Length: 2\r\n\r\nhi there", "hold", b"hi"),
    # -- cut bodies: errors, never a truncated success ------------------------------------
    Case(
        "read to close, cut by the deadline",
        OK + b"\r\nhalf a bo",
        "hold",
        RequestTimeout,
        arrives=b"half a bo",
    ),
    Case("read to close, cut by a reset", OK + b"\r\nhalf a bo", "reset", ConnectionClosed),
    Case(
        "length, cut by a close", OK + b"Content-Length: 10\r\n\r\nhalf", "close", ConnectionClosed
    ),
    Case(
        "length, cut by the deadline",
        OK + b"Content-Length: 10\r\n\r\nhalf",
        "hold",
        RequestTimeout,
        arrives=b"half",
    ),
    Case(
        "chunked, cut by a close",
        OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
        "close",
        ConnectionClosed,
    ),
    Case(
        "chunked, no last chunk",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n",
        "close",
        ConnectionClosed,
    ),
    Case("head cut by a close", OK + b"Content-Len", "close", ConnectionClosed),
    # -- ambiguous framing --------------------------------------------------------------
    Case(
        "Content-Length and Transfer-Encoding",
        OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello"),
        "hold",
        MalformedResponse,
        "Transfer-Encoding",
    ),
    Case(
        "two equal Content-Lengths",
        OK + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "Content-Length",
    ),
    Case(
        "two Content-Lengths",
        OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
        "hold",
        MalformedResponse,
        "Content-Length",
    ),
    Case(
        "a list in Content-Length",
        OK + b"Content-Length: 2, 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
    ),
    Case(
        "a signed Content-Length", OK + b"Content-Length: +2\r\n\r\nhi", "hold", MalformedResponse
    ),
    Case(
        "chunked twice",
        OK + b"Transfer-Encoding: chunked, chunked\r\n\r\n" + chunked(b"hi"),
        "hold",
        MalformedResponse,
    ),
    Case(
        "gzip then chunked",
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(b"hi"),
        "hold",
        MalformedResponse,
    ),
    Case(
        "Transfer-Encoding in HTTP/1.0",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hi"),
        "close",
        MalformedResponse,
    ),
    # -- line endings -------------------------------------------------------------------
    Case(
        "bare LF head",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
        "hold",
        MalformedResponse,
        "line ending",
    ),
    Case(
        "one bare LF in the head",
        OK + b"X-A: 1\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "line ending",
    ),
    Case(
        "bare CR in the head",
        OK + b"X-A: 1\rX-B: 2\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
    ),
    Case(
        "bare LF after a chunk size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "bare LF after chunk data",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "bare LF ends the trailer",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "two CRs before the LF",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    # -- chunk sizes ------------------------------------------------------------------
    Case(
        "space after a chunk size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
        "chunk size",
    ),
    Case(
        "space before a chunk size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n 2\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
        "chunk size",
    ),
    Case(
        "0x in a chunk size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "junk after a chunk size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2g\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "an empty chunk size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "a broken extension",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2;=x\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "an oversized chunk-size line",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2;" + b"x" * 5000 + b"\r\nhi\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
        "too long",
    ),
    Case(
        "an endless chunk-size line",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2;" + b"x" * 5000,
        "hold",
        MalformedResponse,
        "too long",
    ),
    Case(
        "chunk data longer than its size",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi!\r\n0\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    Case(
        "a chunk bigger than the limit",
        OK + b"Transfer-Encoding: chunked\r\n\r\nfffffffffff\r\nhi",
        "hold",
        ResponseTooLarge,
    ),
    # -- trailers ---------------------------------------------------------------------
    Case(
        "trailers up to their limit",
        OK + CHUNKED + b"2\r\nhi\r\n0\r\n" + PAD * (MAX_TRAILER // len(PAD)) + b"\r\n",
        "hold",
        b"hi",
    ),
    Case(
        "trailers beyond their limit",
        OK + CHUNKED + b"2\r\nhi\r\n0\r\n" + PAD * (MAX_TRAILER // len(PAD)) + b"X: 1\r\n\r\n",
        "hold",
        ResponseTooLarge,
        "trailer",
    ),
    Case(
        "unbounded trailers",
        OK + CHUNKED + b"2\r\nhi\r\n0\r\n" + PAD * 200 + b"\r\n",
        "hold",
        ResponseTooLarge,
        "trailer",
    ),
    Case(
        "a malformed trailer",
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nno colon\r\n\r\n",
        "hold",
        MalformedResponse,
    ),
    # -- status lines and interim answers ---------------------------------------------------
    Case(
        "101 Switching Protocols",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"
        + OK
        + b"Content-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "101",
    ),
    Case(
        "103 Early Hints",
        b"HTTP/1.1 103 Early Hints\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "103",
    ),
    Case(
        "endless 100 Continues",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + OK + b"Content-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
    ),
    Case(
        "HTTP/2",
        b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "status line",
    ),
    Case(
        "HTTP/1.2",
        b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "status line",
    ),
    Case(
        "no status line", b"<?xml version='1.0'?>\r\n\r\n", "hold", MalformedResponse, "status line"
    ),
    Case(
        "a control character in the reason",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
    ),
    # -- header lines ----------------------------------------------------------------
    Case(
        "a folded header",
        OK + b"X-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "header",
    ),
    Case(
        "space before the colon",
        OK + b"Content-Length : 2\r\n\r\nhi",
        "hold",
        MalformedResponse,
        "header",
    ),
    # (the value of a field the client does not read is passed on as it came)
    Case("NUL in a value", OK + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi", "hold", b"hi"),
    Case(
        "NUL in Content-Length", OK + b"Content-Length: 2\x00\r\n\r\nhi", "hold", MalformedResponse
    ),
    Case(
        "a head too large", OK + b"X-Pad: " + b"p" * 70000 + b"\r\n\r\n", "hold", ResponseTooLarge
    ),
    # -- bodies beyond the limit ----------------------------------------------------------
    Case(
        "Content-Length beyond the limit",
        OK + b"Content-Length: 1001\r\n\r\n",
        "hold",
        ResponseTooLarge,
    ),
    Case(
        "chunked beyond the limit",
        OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * 600, b"x" * 600),
        "hold",
        ResponseTooLarge,
    ),
    Case("read to close beyond the limit", OK + b"\r\n" + b"x" * 1001, "close", ResponseTooLarge),
]


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[RawServer]:
    raw = RawServer(reactor).start()
    yield raw
    await raw.stop()


TIMEOUT = 30.0


async def exchange(
    reactor: Any, server: RawServer, case: Case, streamed: bool
) -> tuple[bytes | None, BaseException | None]:
    """Send one request to ``server``, which answers with ``case``; the body or the error."""

    def respond(connection: RawConnection, request: bytes) -> None:
        connection.send(case.answer)
        if case.ending == "close":
            connection.close()
        elif case.ending == "reset":
            # once the bytes are out: a reset may otherwise overtake them
            reactor.callLater(0.05, connection.reset)

    server.respond = respond
    clock = Clock()
    client = HTTPClient(reactor, clock=clock)
    pieces: list[bytes] = []
    d = defer.Deferred.fromCoroutine(
        client.request(
            b"GET",
            server.url + "file",
            timeout=TIMEOUT,
            max_body=MAX_BODY,
            sink=pieces.append if streamed else None,
            reuse=False,
        )
    )
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if case.expected is RequestTimeout:
        # the deadline passes once what the server sent has come (streamed: seen come)
        await wait_for(reactor, lambda: server.connections and server.connections[-1].requests)
        if streamed:
            await wait_for(reactor, lambda: b"".join(pieces) == case.arrives)
        else:
            await _turn(reactor)
        assert not outcome
        clock.advance(TIMEOUT)
    await wait_for(reactor, lambda: outcome, 60, f"the answer to {case.name}")
    client.abort_all()
    (result,) = outcome
    if hasattr(result, "value"):  # a Failure
        return None, result.value
    return (b"".join(pieces) if streamed else result.body), None


async def _turn(reactor: Any) -> None:
    """A moment for bytes in flight on the loopback to come."""
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.05, d.callback, None)
    await d


@pytest.mark.parametrize("streamed", [False, True], ids=["in memory", "streamed"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest_twisted.ensureDeferred
async def test_answers_on_the_wire(
    reactor: Any, server: RawServer, case: Case, streamed: bool
) -> None:
    body, error = await exchange(reactor, server, case, streamed)
    if isinstance(case.expected, bytes):
        assert error is None, f"{case.name}: {error!r}"
        assert body == case.expected
    else:
        assert body is None, f"{case.name}: returned {body!r} instead of an error"
        assert isinstance(error, case.expected), f"{case.name}: {error!r}"
        assert case.says.lower() in str(error).lower()


@pytest_twisted.ensureDeferred
async def test_cancelling_a_request_drops_its_connection(reactor: Any, server: RawServer) -> None:
    client = HTTPClient(reactor, clock=Clock())
    pieces: list[bytes] = []
    d = defer.Deferred.fromCoroutine(
        client.request(b"GET", server.url + "file", sink=pieces.append, reuse=False)
    )
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    await wait_for(reactor, lambda: server.connections and server.connections[-1].requests)
    connection = server.connections[-1]
    connection.send(OK + b"Content-Length: 10\r\n\r\nhalf")
    await wait_for(reactor, lambda: pieces)
    d.cancel()
    assert outcome and isinstance(outcome[0].value, defer.CancelledError)
    await wait_for(reactor, lambda: connection.closed, 60, "the connection to be dropped")
