"""Hostile XML-RPC answers from a builder, over real sockets: nested, wide, huge, entity
bombs. Each is refused as a protocol error having read no more than its budget, the builder
is judged for it like for any broken answer, and nothing escapes into the log."""

from __future__ import annotations

import xmlrpc.client
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from rawhttp import RawConnection, RawServer
from twisted.internet.task import Clock

from buildmaster.builderclient import BuilderClient, BuilderProtocolError
from buildmaster.config import MasterConfig
from buildmaster.httpclient import HTTPClient
from buildmaster.policy import FailurePolicy
from buildmaster.rpcanswer import answer_budgets
from buildmaster.store import Store

STATUS, OTHER = answer_budgets(1000)
HEAD = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
TAIL = b"</param>\n</params>\n</methodResponse>\n"
#: deep enough for repr() or == of the value to overflow Python's stack, small enough for
#: every call's size budget
DEPTH = 2_500
BOMB = (
    b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
        for i in range(1, 10)
    )
    + b"]>"
)


def wide(members: int) -> bytes:
    """A struct with that many members (four elements each)."""
    each = b"<member><name>k%d</name><value><i4>1</i4></value></member>"
    members_xml = b"".join(each % i for i in range(members))
    return HEAD + b"<value><struct>" + members_xml + b"</struct></value>" + TAIL


def huge() -> bytes:
    return HEAD + b"<value><string>" + b"A" * (32 * 1024 * 1024) + b"</string></value>" + TAIL


#: (answer, how it is framed, what the failnote says), for status() and for the other calls
HOSTILE = {
    "nested": (
        lambda: HEAD + b"<value><array><data>" * DEPTH + b"</data></array></value>" * DEPTH + TAIL,
        "length",
        "answer refused: arrays and structs nested deeper than 4",
    ),
    "wide": (
        lambda: wide(10_000),
        "length",
        f"answer refused: more than {STATUS.max_elements} XML elements",
    ),
    "huge": (huge, "length", f"exceeds the limit of {STATUS.max_bytes}"),
    "huge, read to the close": (huge, "close", f"exceeds the limit of {STATUS.max_bytes} bytes"),
    "billion laughs": (
        lambda: (
            b"<?xml version='1.0'?>\n"
            + BOMB
            + b"<methodResponse><params><param><value><string>&lol9;</string></value>"
            + TAIL
        ),
        "length",
        "answer refused: a document type declaration",
    ),
}


def answering(body: bytes, framing: str) -> Any:
    def respond(connection: RawConnection, request: bytes) -> None:
        if framing == "length":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
            connection.send(head % len(body) + body)
        else:
            connection.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n" + body)
            connection.close()

    return respond


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[RawServer]:
    raw = RawServer(reactor).start()
    yield raw
    await raw.stop()


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest_twisted.ensureDeferred
async def test_a_hostile_status_fails_the_builder_with_a_reason(
    reactor: Any, make_world: Any, store: Store, server: RawServer, kind: str
) -> None:
    make, framing, says = HOSTILE[kind]
    server.respond = answering(make(), framing)
    config = MasterConfig(
        scan_interval=3600,
        failure_policy=FailurePolicy(tolerated_scan_failures=0, builder_disable_threshold=1),
    )
    world = await make_world(config)
    builder = await store.builders.new("hostile", server.url, [world.data.processor_386])
    await world.harness.master.scan_all()
    builder = await store.builders.get(builder)
    assert not builder.builderok
    assert builder.failnotes is not None and builder.failnotes.startswith("status(): ")
    assert says in builder.failnotes
    failures = [e.message for e in await store.events.for_builder(builder.id)]
    assert any(says in message for message in failures)
    # (a logged error, e.g. a RecursionError escaping the scan, fails the test by itself)


@pytest.mark.parametrize("kind", ["nested", "wide", "billion laughs"])
@pytest.mark.parametrize("call", ["echo", "info", "ensurepresent", "build", "abort", "clean"])
@pytest_twisted.ensureDeferred
async def test_hostile_answers_to_every_call_are_protocol_errors(
    reactor: Any, server: RawServer, call: str, kind: str
) -> None:
    make, framing, says = HOSTILE[kind]
    body = make()
    if kind == "wide":
        body, says = wide(300), f"answer refused: more than {OTHER.max_elements} XML elements"
    server.respond = answering(body, framing)
    http = HTTPClient(reactor, clock=Clock())
    client = BuilderClient(http, server.url, timeout=30)
    calls = {
        "echo": lambda: client.echo("Test"),
        "info": client.info,
        "ensurepresent": lambda: client.ensurepresent("0" * 40, "http://librarian/x"),
        "build": lambda: client.build("PACKAGEBUILD-1", "binarypackage", "0" * 40, {}, {}),
        "abort": client.abort,
        "clean": client.clean,
    }
    try:
        with pytest.raises(BuilderProtocolError) as caught:
            await calls[call]()
    finally:
        http.abort_all()
    assert str(caught.value) == f"{call}(): {says}"


@pytest_twisted.ensureDeferred
async def test_an_ensurepresent_answer_beyond_its_size_is_refused(
    reactor: Any, server: RawServer
) -> None:
    message = "x" * OTHER.max_bytes
    body = xmlrpc.client.dumps(([True, message],), methodresponse=True).encode()
    server.respond = answering(body, "length")
    http = HTTPClient(reactor, clock=Clock())
    client = BuilderClient(http, server.url, timeout=30)
    try:
        with pytest.raises(BuilderProtocolError) as caught:
            await client.ensurepresent("0" * 40, "http://librarian/x")
    finally:
        http.abort_all()
    assert f"exceeds the limit of {OTHER.max_bytes}" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_an_ensurepresent_answer_says_whether_the_file_was_fetched(
    reactor: Any, server: RawServer
) -> None:
    """``[True, "Download"]``: fetched; ``[True, "Cache"]``: the builder had it; other words,
    even a number, are the builder's own (not trusted): present, how unknown, no error. A
    first element that is not a bool stays a protocol error."""
    http = HTTPClient(reactor, clock=Clock())
    client = BuilderClient(http, server.url, timeout=30)
    seen = []
    try:
        for answer in ([True, "Download"], [True, "Cache"], [True, "Beamed"], [True, 42]):
            body = xmlrpc.client.dumps((answer,), methodresponse=True).encode()
            server.respond = answering(body, "length")
            result = await client.ensurepresent("0" * 40, "http://librarian/x")
            seen.append((result.present, result.fetched, result.message))
        body = xmlrpc.client.dumps((["yes", "Cache"],), methodresponse=True).encode()
        server.respond = answering(body, "length")
        with pytest.raises(BuilderProtocolError) as caught:
            await client.ensurepresent("0" * 40, "http://librarian/x")
    finally:
        http.abort_all()
    assert seen == [
        (True, True, "Download"),
        (True, False, "Cache"),
        (True, None, "Beamed"),
        (True, None, "42"),
    ]
    assert "should return [bool, message], got ['yes', 'Cache']" in str(caught.value)
