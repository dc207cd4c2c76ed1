"""Conformance: every call sequence of docs/protocol.md, over real sockets, exact values.

The builder runs on 127.0.0.1 with its state machine on a Clock (time moves only when a
test says so). Every test runs twice: with Twisted's XML-RPC Proxy and Agent (HTTP/1.0,
``Connection: close``: the builder answers through twisted.web), and with the master's own
client (HTTP/1.1, kept-alive connections: the builder's fast path answers, and hands the
connection to twisted.web for what it does not answer itself).
"""

from __future__ import annotations

import hashlib
import io
import xmlrpc.client
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from twisted.web.xmlrpc import Fault, Proxy

from buildmaster.httpclient import HTTPClient
from slavesim import Farm, SimBuilder
from slavesim.testing import (
    FileServer,
    FileServerResource,
    leftover_delayed_calls,
    read_body,
    wait_for_no_tcp,
)

IDLE = "BuilderStatus.IDLE"
BUILDING = "BuilderStatus.BUILDING"
ABORTING = "BuilderStatus.ABORTING"
WAITING = "BuilderStatus.WAITING"
VERSION = "slavesim-0.1"
CHROOT = b"chroot tarball for hoary/i386"
DSC = b"Format: 3.0 (quilt)\nSource: hello\n"
ORIG = b"hello upstream tarball"
ARGS = {
    "distribution": "ubuntu",
    "series": "hoary",
    "suite": "hoary",
    "ogrecomponent": "main",
    "arch_tag": "i386",
    "archive_purpose": "PRIMARY",
    "archives": ["deb http://ftpmaster.example/ubuntu hoary main"],
    "archive_private": False,
    "fast_cleanup": False,
    "build_url": "http://buildmaster.example/builds/42",
    "trusted_keys": [],
    "build_debug_symbols": False,
}


def sha1_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class Wire:
    """A master's view of one simulated builder, plus a librarian to download from.

    :param kept_alive: talk HTTP/1.1 over kept-alive connections (the master's client)
        rather than through Twisted's Proxy and Agent, one connection per request.
    """

    def __init__(
        self, reactor: Any, farm: Farm, bob: SimBuilder, clock: Clock, kept_alive: bool
    ) -> None:
        self.reactor = reactor
        self.farm = farm
        self.bob = bob
        self.clock = clock
        self.proxy = Proxy((bob.url + "rpc").encode(), allowNone=True)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.client = HTTPClient(reactor) if kept_alive else None
        self.librarian = FileServer()
        self.librarian_port = reactor.listenTCP(
            0, Site(FileServerResource(self.librarian)), interface="127.0.0.1"
        )

    def librarian_url(self, path: str, data: bytes) -> str:
        self.librarian.files[path] = data
        return f"http://127.0.0.1:{self.librarian_port.getHost().port}{path}"

    async def call(self, method: str, *args: Any) -> Any:
        if self.client is None:
            return await self.proxy.callRemote(method, *args)
        body = xmlrpc.client.dumps(args, method, allow_none=True).encode()
        code, answer = await self.post("rpc", body)
        assert code == 200
        return xmlrpc.client.loads(answer)[0][0]

    async def fault(self, method: str, *args: Any) -> Fault:
        with pytest.raises(Fault) as info:
            await self.call(method, *args)
        return info.value

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.client is not None:
            response = await self.client.request(b"GET", self.bob.url + path)
            assert response.body is not None
            return response.status, response.body
        response = await self.agent.request(b"GET", (self.bob.url + path).encode())
        return response.code, await read_body(response)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.client is not None:
            headers = {b"Content-Type": b"text/xml"}
            response = await self.client.request(b"POST", self.bob.url + path, body, headers)
            assert response.body is not None
            return response.status, response.body
        producer: Any = FileBodyProducer(io.BytesIO(body))
        response = await self.agent.request(
            b"POST",
            (self.bob.url + path).encode(),
            Headers({b"content-type": [b"text/xml"]}),
            producer,
        )
        return response.code, await read_body(response)

    async def ensure_inputs(self) -> dict[str, str]:
        """The dispatch sequence: ensurepresent the chroot and every source file."""
        for path, data in (("/chroot", CHROOT), ("/hello_2.10-1.dsc", DSC), ("/orig", ORIG)):
            url = self.librarian_url(path, data)
            assert await self.call("ensurepresent", sha1_of(data), url, None, None) == [
                True,
                "Download",
            ]
        return {"hello_2.10-1.dsc": sha1_of(DSC), "hello_2.10.orig.tar.gz": sha1_of(ORIG)}

    async def start_build(self, build_id: str = "PACKAGEBUILD-42") -> Any:
        filemap = await self.ensure_inputs()
        return await self.call(
            "build", build_id, "binarypackage", sha1_of(CHROOT), filemap, dict(ARGS)
        )

    async def snapshot(self) -> tuple[object, ...]:
        """What a master could tell about the builder's state and cache."""
        return (await self.call("status"), self.bob.cache.files())


@pytest_twisted.async_yield_fixture(params=["one-shot", "kept-alive"])
async def wire(reactor: Any, tmp_path: Path, request: Any) -> AsyncIterator[Wire]:
    before = set(reactor.getDelayedCalls())
    clock = Clock()
    farm = Farm(reactor, tmp_path / "caches", clock=clock, build_time=10, abort_time=2)
    bob = await farm.start_builder("bob", ("i386",))
    fixture = Wire(reactor, farm, bob, clock, kept_alive=request.param == "kept-alive")
    yield fixture
    if fixture.client is not None:
        fixture.client.close_idle()
    await farm.stop()
    await fixture.librarian_port.stopListening()
    await fixture.pool.closeCachedConnections()
    await wait_for_no_tcp(reactor)
    assert clock.getDelayedCalls() == []
    assert leftover_delayed_calls(reactor, before) == []


# -- transport and the simple calls --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_echo_info_status(wire: Wire) -> None:
    assert await wire.call("echo", "ping", 1, [2]) == ["ping", 1, [2]]
    assert await wire.call("echo") == []
    assert await wire.call("info") == ["1.0", "i386", ["binarypackage"]]
    assert await wire.call("status") == {"builder_status": IDLE, "builder_version": VERSION}


@pytest_twisted.ensureDeferred
async def test_unknown_method_is_fault_8001(wire: Wire) -> None:
    fault = await wire.fault("proxy_info")
    assert (fault.faultCode, fault.faultString) == (8001, "procedure proxy_info not found")


@pytest_twisted.ensureDeferred
async def test_no_build_log_before_a_build(wire: Wire) -> None:
    assert (await wire.get("filecache/buildlog"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_status_fast_path_answers_exactly_what_xmlrpc_would(wire: Wire) -> None:
    for body in (
        xmlrpc.client.dumps((), "status").encode(),
        b"<?xml version='1.0'?><methodCall><methodName>status</methodName></methodCall>",
    ):
        for _ in range(2):  # the first parses, the second uses the parsed-bodies cache
            code, answer = await wire.post("rpc", body)
            assert code == 200
            expected = {"builder_status": IDLE, "builder_version": VERSION}
            assert (
                answer
                == xmlrpc.client.dumps((expected,), methodresponse=True, allow_none=True).encode()
            )
    assert [call.method for call in wire.bob.history] == ["status"] * 4


# -- ensurepresent --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ensurepresent_sequence(wire: Wire) -> None:
    sha1 = sha1_of(CHROOT)
    url = wire.librarian_url("/chroot", CHROOT)
    assert await wire.call("ensurepresent", sha1, None, None, None) == [False, "No URL"]
    assert await wire.call("ensurepresent", sha1, url, None, None) == [True, "Download"]
    assert await wire.call("ensurepresent", sha1, url, None, None) == [True, "Cache"]
    assert await wire.call("ensurepresent", sha1, None, None, None) == [True, "No URL"]
    assert await wire.call("ensurepresent", "2" * 40, url, None, None) == [
        False,
        "Digests did not match, removing again!",
    ]
    missing = url + "-missing"
    assert await wire.call("ensurepresent", "3" * 40, missing, None, None) == [
        False,
        "Error accessing Librarian: HTTP Error 404: Not Found",
    ]
    assert wire.bob.cache.files() == {sha1}
    code, body = await wire.get(f"filecache/{sha1}")
    assert (code, body) == (200, CHROOT)


@pytest_twisted.ensureDeferred
async def test_ensurepresent_with_basic_auth(wire: Wire) -> None:
    url = wire.librarian_url("/private.dsc", DSC)
    wire.librarian.credentials["/private.dsc"] = ("buildd", "token-123")
    assert await wire.call("ensurepresent", sha1_of(DSC), url, "buildd", "wrong") == [
        False,
        "Error accessing Librarian: HTTP Error 401: Unauthorized",
    ]
    assert await wire.call("ensurepresent", sha1_of(DSC), url, "buildd", "token-123") == [
        True,
        "Download",
    ]


# -- a build from dispatch to clean -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_build_sequence_ok(wire: Wire) -> None:
    assert await wire.start_build() == [BUILDING, "PACKAGEBUILD-42"]
    assert wire.bob.history[-1].args[4] == ARGS, "the builder got the master's args"

    tails = []
    for _ in range(3):
        status = await wire.call("status")
        assert set(status) == {"builder_status", "builder_version", "build_id", "logtail"}
        assert status["builder_status"] == BUILDING
        assert status["build_id"] == "PACKAGEBUILD-42"
        assert isinstance(status["logtail"], xmlrpc.client.Binary)
        assert len(status["logtail"].data) <= 2048
        tails.append(status["logtail"].data)
        wire.clock.advance(1)
    assert len(set(tails)) == 3, "the log tail changes between polls"
    code, log = await wire.get("filecache/buildlog")
    assert code == 200
    assert log.endswith((await wire.call("status"))["logtail"].data)
    assert b"http://buildmaster.example/builds/42" in log
    wire.clock.advance(6)
    code, log = await wire.get("filecache/buildlog")
    tail = (await wire.call("status"))["logtail"].data
    assert len(log) > 2048 and tail == log[-2048:], "the tail is the last 2 KiB of the log"

    wire.clock.advance(10)
    status = await wire.call("status")
    assert set(status) == {
        "builder_status",
        "builder_version",
        "build_status",
        "build_id",
        "filemap",
        "dependencies",
    }
    assert status["builder_status"] == WAITING
    assert status["build_status"] == "BuildStatus.OK"
    assert status["build_id"] == "PACKAGEBUILD-42"
    assert status["dependencies"] == ""
    assert sorted(status["filemap"]) == ["hello_2.10-1_i386.changes", "hello_2.10-1_i386.deb"]
    for name, sha1 in status["filemap"].items():
        code, body = await wire.get(f"filecache/{sha1}")
        assert code == 200 and sha1_of(body) == sha1, name
    code, log = await wire.get("filecache/buildlog")
    assert code == 200 and b"Build status: BuildStatus.OK" in log

    assert await wire.call("clean") == IDLE
    assert await wire.call("status") == {"builder_status": IDLE, "builder_version": VERSION}
    for sha1 in status["filemap"].values():
        assert (await wire.get(f"filecache/{sha1}"))[0] == 404
    assert (await wire.get("filecache/buildlog"))[0] == 404


@pytest.mark.parametrize(
    ("rules", "build_status", "extra"),
    [
        ("*=PACKAGEFAIL", "BuildStatus.PACKAGEFAIL", {"filemap": {}, "dependencies": ""}),
        (
            "*=DEPFAIL[libfoo (>= 1.0)]",
            "BuildStatus.DEPFAIL",
            {"filemap": {}, "dependencies": "libfoo (>= 1.0)"},
        ),
        ("*=CHROOTFAIL", "BuildStatus.CHROOTFAIL", {}),
        ("*=BUILDERFAIL", "BuildStatus.BUILDERFAIL", {}),
        ("*=GIVENBACK", "BuildStatus.GIVENBACK", {}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failed_builds_wait_with_their_status(
    wire: Wire, rules: str, build_status: str, extra: dict[str, object]
) -> None:
    from slavesim import parse_rules

    wire.farm.rules = parse_rules(rules)
    await wire.start_build()
    wire.clock.advance(10)
    assert await wire.call("status") == {
        "builder_status": WAITING,
        "builder_version": VERSION,
        "build_status": build_status,
        "build_id": "PACKAGEBUILD-42",
        **extra,
    }
    assert await wire.call("clean") == IDLE


@pytest_twisted.ensureDeferred
async def test_abort_sequence(wire: Wire) -> None:
    await wire.start_build()
    wire.clock.advance(3)
    assert await wire.call("abort") == ABORTING
    assert await wire.call("status") == {
        "builder_status": ABORTING,
        "builder_version": VERSION,
        "build_id": "PACKAGEBUILD-42",
    }
    assert await wire.call("abort") == ABORTING, "a second abort is accepted"
    wire.clock.advance(2)
    assert await wire.call("status") == {
        "builder_status": WAITING,
        "builder_version": VERSION,
        "build_status": "BuildStatus.ABORTED",
        "build_id": "PACKAGEBUILD-42",
    }
    assert await wire.call("clean") == IDLE


# -- refusals -------------------------------------------------------------------------


async def assert_fault_8002_unchanged(wire: Wire, method: str, *args: object) -> None:
    before = await wire.snapshot()
    fault = await wire.fault(method, *args)
    assert (fault.faultCode, fault.faultString) == (8002, "error")
    assert await wire.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_wrong_state_calls_are_fault_8002_and_change_nothing(wire: Wire) -> None:
    await assert_fault_8002_unchanged(wire, "abort")
    await assert_fault_8002_unchanged(wire, "clean")
    await wire.start_build()
    await assert_fault_8002_unchanged(wire, "clean")
    wire.clock.advance(10)
    await assert_fault_8002_unchanged(wire, "abort")


@pytest_twisted.ensureDeferred
async def test_build_while_busy_is_fault_8002_and_overwrites_the_build_id(wire: Wire) -> None:
    filemap = await wire.ensure_inputs()
    await wire.call("build", "PACKAGEBUILD-1", "binarypackage", sha1_of(CHROOT), filemap, ARGS)
    fault = await wire.fault(
        "build", "PACKAGEBUILD-2", "binarypackage", sha1_of(CHROOT), filemap, ARGS
    )
    assert (fault.faultCode, fault.faultString) == (8002, "error")
    status = await wire.call("status")
    assert (status["builder_status"], status["build_id"]) == (BUILDING, "PACKAGEBUILD-2")


@pytest_twisted.ensureDeferred
async def test_unknown_builder_and_unknown_sums(wire: Wire) -> None:
    filemap = await wire.ensure_inputs()
    chroot = sha1_of(CHROOT)
    assert await wire.call("build", "B-1", "snap", chroot, filemap, ARGS) == [
        "BuilderStatus.UNKNOWNBUILDER",
        "snap not in ['binarypackage']",
    ]
    status, info = await wire.call("build", "B-1", "binarypackage", "4" * 40, filemap, ARGS)
    assert status == "BuilderStatus.UNKNOWNSUM" and "4" * 40 in info
    missing = {**filemap, "hello_2.10-1.debian.tar.xz": "5" * 40}
    status, info = await wire.call("build", "B-1", "binarypackage", chroot, missing, ARGS)
    assert status == "BuilderStatus.UNKNOWNSUM" and "5" * 40 in info
    assert (await wire.call("status"))["builder_status"] == IDLE


@pytest_twisted.ensureDeferred
async def test_malformed_calls_are_fault_8002_and_change_nothing(wire: Wire) -> None:
    filemap = await wire.ensure_inputs()
    chroot = sha1_of(CHROOT)
    no_dsc = {"hello_2.10.orig.tar.gz": sha1_of(ORIG)}
    no_suite = {k: v for k, v in ARGS.items() if k != "suite"}
    for method, args in [
        ("status", (1,)),
        ("info", ("x",)),
        ("clean", (None,)),
        ("ensurepresent", (chroot, None)),
        ("ensurepresent", ("../../../etc/passwd", None, None, None)),
        ("ensurepresent", ("not-hex-" + "0" * 32, "http://x/", None, None)),
        ("ensurepresent", (chroot.upper(), None, None, None)),
        ("ensurepresent", (chroot, 42, None, None)),
        ("build", ("B-1", "binarypackage", chroot, filemap)),
        ("build", ("B-1", "binarypackage", "../" + chroot, filemap, ARGS)),
        ("build", ("B-1", "binarypackage", chroot, {"../x.dsc": sha1_of(DSC)}, ARGS)),
        ("build", ("B-1", "binarypackage", chroot, ["hello.dsc"], ARGS)),
        ("build", (7, "binarypackage", chroot, filemap, ARGS)),
        ("build", ("", "binarypackage", chroot, filemap, ARGS)),
        ("build", ("B-1", "binarypackage", chroot, no_dsc, ARGS)),
        ("build", ("B-1", "binarypackage", chroot, filemap, no_suite)),
    ]:
        await assert_fault_8002_unchanged(wire, method, *args)


@pytest_twisted.ensureDeferred
async def test_filecache_serves_only_cache_files(wire: Wire) -> None:
    await wire.ensure_inputs()
    chroot = sha1_of(CHROOT)
    assert (await wire.get(f"filecache/{chroot}"))[0] == 200
    for path in [
        "filecache/",
        "filecache",
        f"filecache/{chroot.upper()}",
        f"filecache/{chroot}/x",
        "filecache/..%2F..%2F..%2Fetc%2Fpasswd",
        "filecache/%2E%2E",
        f"filecache/.{chroot}",
        "filecache/" + "0" * 40,
        "",
        "nothing-here",
    ]:
        assert (await wire.get(path))[0] == 404, path
    response = await wire.agent.request(b"HEAD", (wire.bob.url + f"filecache/{chroot}").encode())
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-length") == [str(len(CHROOT)).encode()]
    assert await read_body(response) == b""
    assert (await wire.get("rpc"))[0] == 405
    assert (await wire.post(f"filecache/{chroot}", b""))[0] == 405
    assert wire.bob.cache.files() == {chroot, sha1_of(DSC), sha1_of(ORIG)}


@pytest_twisted.ensureDeferred
async def test_unparseable_request_is_a_fault(wire: Wire) -> None:
    code, body = await wire.post("rpc", b"<this is not xml-rpc")
    assert code == 200
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(body)
    assert info.value.faultCode == 8002
    assert (await wire.call("status"))["builder_status"] == IDLE
