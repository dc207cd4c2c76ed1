"""A property of the builder HTTP client: whatever bytes come back, the client returns
exactly the body they frame, or raises one of its own errors (an
:class:`~buildmaster.httpclient.HTTPError`); never anything else, never a cut body, and
never more than ``max_body`` bytes of body (in memory or streamed).

Answers are framed correctly in random ways (Content-Length; chunked, split at random
places, with random extensions and trailers; read to a clean close; HTTP/1.0 and 1.1, with
a ``100 Continue`` first or not), then possibly truncated, damaged, or ended by a reset,
and handed to the connection in random pieces. The client and its connection are the real
ones; the connection runs over Twisted's in-memory transport (a Hypothesis test cannot
wait for the running reactor), so the pieces and the end of the connection are exactly as
drawn. test_httpclient_wire.py has the same kinds of answer over real sockets.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from buildmaster.httpclient import HTTPClient, HTTPError, ResponseTooLarge

TOKEN_CHARS = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
field_values = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128).strip(b" \t")
)
quoted = st.binary(max_size=12).map(
    lambda b: (
        b'"'
        + b"".join(
            (b"\\" + bytes([c])) if c in b'"\\' else bytes([c])
            for c in b
            if c == 9 or 32 <= c < 127 or c >= 128
        )
        + b'"'
    )
)
whitespace = st.sampled_from([b"", b" ", b"\t", b" \t "])
FRAMING_NAMES = (b"content-length", b"transfer-encoding", b"connection")


@st.composite
def fields(draw: Any) -> bytes:
    name = draw(tokens.filter(lambda n: n.lower() not in FRAMING_NAMES))
    return name + b":" + draw(whitespace) + draw(field_values) + draw(whitespace) + b"\r\n"


@st.composite
def chunk_extensions(draw: Any) -> bytes:
    text = b""
    for _ in range(draw(st.integers(0, 3))):
        text += draw(whitespace) + b";" + draw(whitespace) + draw(tokens)
        value = draw(st.none() | tokens | quoted)
        if value is not None:
            text += draw(whitespace) + b"=" + draw(whitespace) + value
    return text


@st.composite
def chunked_body(draw: Any, body: bytes) -> bytes:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(body) - 1, 1)), max_size=6))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for piece in pieces:
        if not piece:
            continue
        size = b"%x" % len(piece)
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 2)) + size
        out += size + draw(chunk_extensions()) + b"\r\n" + piece + b"\r\n"
    out += b"0" + draw(chunk_extensions()) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(fields())
    return out + b"\r\n"


@attrs.frozen
class Answer:
    data: bytes  # what the server sends, before any damage
    body: bytes  # the body it frames
    framing: str  # "length", "chunked" or "close"
    head_size: int  # bytes before the body


@st.composite
def answers(draw: Any) -> Answer:
    body = draw(st.binary(max_size=1500))
    minor = draw(st.sampled_from([b"1", b"0"]))
    framings = ["length", "chunked", "close"] if minor == b"1" else ["length", "close"]
    framing = draw(st.sampled_from(framings))
    status = draw(st.sampled_from([b"200 OK", b"200", b"404 Not Found", b"500 Oops \xe9"]))
    head = b""
    if minor == b"1" and draw(st.booleans()):
        head += b"HTTP/1.1 100 Continue\r\n" + b"".join(draw(st.lists(fields(), max_size=2)))
        head += b"\r\n"
    head += b"HTTP/1." + minor + b" " + status + b"\r\n"
    lines = draw(st.lists(fields(), max_size=4))
    if framing == "length":
        lines.append(b"Content-Length:" + draw(whitespace) + b"%d" % len(body) + b"\r\n")
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding:" + draw(whitespace) + b"chunked\r\n")
    if draw(st.booleans()):
        lines.append(b"Connection: close\r\n")
    order = draw(st.permutations(lines))
    head += b"".join(order) + b"\r\n"
    framed = draw(chunked_body(body)) if framing == "chunked" else body
    return Answer(head + framed, body, framing, len(head))


@attrs.frozen
class Delivery:
    data: bytes
    #: the body the client must return when nothing was damaged (None: it must fail)
    expected: bytes | None
    #: bytes were flipped or inserted: any body or any of the client's errors will do
    damaged: bool
    reset: bool
    pieces: tuple[bytes, ...]
    max_body: int
    streamed: bool


@st.composite
def deliveries(draw: Any) -> Delivery:
    answer = draw(answers())
    data = bytearray(answer.data)
    expected: bytes | None = answer.body
    damaged = False
    if draw(st.integers(0, 3)) == 0:  # truncated
        cut = draw(st.integers(0, len(data) - 1))
        del data[cut:]
        if answer.framing == "close" and cut >= answer.head_size:
            expected = answer.body[: cut - answer.head_size]  # a clean close frames it so
        else:
            expected = None
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):  # damaged
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"0", b";", b":"]))
        damaged = True
    reset = draw(st.integers(0, 4)) == 0
    if reset and answer.framing == "close":
        expected = None  # a reset cuts a body that only a clean close ends
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = tuple(bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
    max_body = draw(st.sampled_from([0, 10, 700, 1500, 4096]))
    streamed = draw(st.booleans())
    return Delivery(bytes(data), expected, damaged, reset, pieces, max_body, streamed)


def fetch(delivery: Delivery) -> Any:
    """The client's answer when the builder answers with ``delivery``: the body, or the
    exception raised. Connected through an in-memory transport, the pieces handed to the
    connection exactly as drawn, then a clean close or a reset."""
    reactor = MemoryReactorClock()  # connectTCP and the deadlines' clock (never advanced)
    client = HTTPClient(reactor)
    streamed: list[bytes] | None = [] if delivery.streamed else None
    d = defer.Deferred.fromCoroutine(
        client.request(
            b"GET",
            "http://builder.example:8221/filecache/x",
            max_body=delivery.max_body,
            sink=None if streamed is None else streamed.append,
            reuse=False,
        )
    )
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    factory = reactor.tcpClients[0][2]
    connection: Any = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    assert transport.value().startswith(b"GET /filecache/x HTTP/1.1\r\n")
    for piece in delivery.pieces:
        if transport.disconnecting:  # the client hung up: nothing more is read
            break
        connection.dataReceived(piece)
    if transport.disconnected:
        reason: Exception = error.ConnectionAborted()
    elif transport.disconnecting or not delivery.reset:
        reason = error.ConnectionDone()
    else:
        reason = error.ConnectionLost()
    connection.connectionLost(Failure(reason))
    assert outcome, "no answer once the connection was gone"
    assert not reactor.getDelayedCalls()  # the deadline's timer was cancelled
    result = outcome[0]
    if isinstance(result, Failure):
        return result.value
    return b"".join(streamed) if streamed is not None else result.body


@settings(max_examples=1000, deadline=None)
@given(delivery=deliveries())
def test_the_framed_body_or_an_error(delivery: Delivery) -> None:
    result = fetch(delivery)
    if isinstance(result, BaseException):
        assert isinstance(result, HTTPError), repr(result)  # nothing but our own errors
    else:
        assert isinstance(result, bytes) and len(result) <= delivery.max_body
    if delivery.damaged:
        return
    if delivery.expected is None:
        assert isinstance(result, HTTPError), f"a cut answer returned {result!r}"
    elif len(delivery.expected) > delivery.max_body:
        assert isinstance(result, ResponseTooLarge), repr(result)
    else:
        assert result == delivery.expected
