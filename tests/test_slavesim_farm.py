"""Many builders in one process: names, ports, URLs, independence, clean shutdown."""

from __future__ import annotations

import os
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.error import CannotListenError
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.xmlrpc import Proxy

from slavesim import Farm
from slavesim.testing import leftover_delayed_calls, wait_for_no_tcp

ARGS = {"distribution": "ubuntu", "series": "hoary", "suite": "hoary", "ogrecomponent": "main"}


async def stop_cleanly(reactor: Any, farm: Farm, before: set[Any]) -> None:
    """Stop ``farm``; then no port, connection or timer of ours may be left."""
    await farm.stop()
    await wait_for_no_tcp(reactor)
    assert leftover_delayed_calls(reactor, before) == []


async def status_of(url: str) -> Any:
    return await Proxy((url + "rpc").encode()).callRemote("status")


def free_port_block(count: int) -> int:
    """A first port P such that P..P+count-1 were all free just now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no block of free ports found")


@pytest_twisted.ensureDeferred
async def test_start_builders_on_any_free_ports(reactor: Any, tmp_path: Path) -> None:
    before = set(reactor.getDelayedCalls())
    farm = Farm(reactor, tmp_path)
    builders = await farm.start_builders(count=12, arch_tags=("amd64", "i386"))
    assert [b.name for b in builders] == [f"sim{i:03d}" for i in range(12)]
    assert len({b.port for b in builders}) == 12
    for b in builders:
        assert b.url == f"http://127.0.0.1:{b.port}/"
        assert b.arch_tags == ("amd64", "i386")
        assert (b.cache.directory.parent, b.cache.directory.name) == (tmp_path, b.name)
    infos = [await Proxy((b.url + "rpc").encode()).callRemote("info") for b in builders]
    assert infos == [["1.0", "amd64", ["binarypackage"]]] * 12
    assert [listing.to_json() for listing in farm.listings()] == [
        {"name": b.name, "url": b.url, "arch_tags": ["amd64", "i386"]} for b in builders
    ]
    await stop_cleanly(reactor, farm, before)


@pytest_twisted.ensureDeferred
async def test_builder_i_listens_on_port_plus_i(reactor: Any, tmp_path: Path) -> None:
    before = set(reactor.getDelayedCalls())
    first = free_port_block(3)
    farm = Farm(reactor, tmp_path)
    try:
        builders = await farm.start_builders(count=3, name_prefix="bob-", port=first)
        assert [(b.name, b.port) for b in builders] == [
            ("bob-000", first),
            ("bob-001", first + 1),
            ("bob-002", first + 2),
        ]
        for b in builders:
            assert (await status_of(b.url))["builder_status"] == "BuilderStatus.IDLE"
    finally:
        await stop_cleanly(reactor, farm, before)


@pytest_twisted.ensureDeferred
async def test_a_taken_port_fails_and_stops_what_was_started(reactor: Any, tmp_path: Path) -> None:
    first = free_port_block(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first + 2))
        squatter.listen()
        farm = Farm(reactor, tmp_path)
        with pytest.raises(CannotListenError):
            await farm.start_builders(count=3, port=first)
    assert farm.builders == {}
    await stop_cleanly(reactor, farm, set())


@pytest_twisted.ensureDeferred
async def test_spread_arch(reactor: Any, tmp_path: Path) -> None:
    farm = Farm(reactor, tmp_path)
    builders = await farm.start_builders(count=4, arch_tags=("amd64", "arm64"), spread_arch=True)
    assert [b.arch_tags for b in builders] == [("amd64",), ("arm64",)] * 2
    assert await Proxy((builders[1].url + "rpc").encode()).callRemote("info") == [
        "1.0",
        "arm64",
        ["binarypackage"],
    ]
    await stop_cleanly(reactor, farm, set())


@pytest_twisted.ensureDeferred
async def test_names_must_be_unique_and_plain(reactor: Any, tmp_path: Path) -> None:
    farm = Farm(reactor, tmp_path)
    await farm.start_builder("bob")
    for bad in ("bob", "../bob", "", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            await farm.start_builder(bad)
    assert list(farm.builders) == ["bob"]
    await stop_cleanly(reactor, farm, set())


@pytest_twisted.ensureDeferred
async def test_builders_are_independent(reactor: Any, tmp_path: Path) -> None:
    farm = Farm(reactor, tmp_path, build_time=60)
    bob, alice = await farm.start_builders(count=2)
    chroot, dsc = bob.cache.store(b"chroot"), bob.cache.store(b"dsc")
    proxy = Proxy((bob.url + "rpc").encode())
    reply = await proxy.callRemote(
        "build", "PACKAGEBUILD-1", "binarypackage", chroot, {"h_1.dsc": dsc}, ARGS
    )
    assert reply == ["BuilderStatus.BUILDING", "PACKAGEBUILD-1"]
    assert (await status_of(alice.url))["builder_status"] == "BuilderStatus.IDLE"
    assert not alice.cache.has(chroot), "caches are per builder"
    await stop_cleanly(reactor, farm, set())
    assert bob.state.state == "BuilderStatus.BUILDING", "stopping keeps the state"


@pytest_twisted.ensureDeferred
async def test_url_host_for_a_wildcard_interface(reactor: Any, tmp_path: Path) -> None:
    farm = Farm(reactor, tmp_path, url_host="builders.example")
    bob = await farm.start_builder("bob", interface="0.0.0.0")
    assert bob.url == f"http://builders.example:{bob.port}/"
    assert (await status_of(f"http://127.0.0.1:{bob.port}/"))["builder_status"]
    await stop_cleanly(reactor, farm, set())


@pytest_twisted.ensureDeferred
async def test_the_vm_reset_command_makes_a_new_machine(reactor: Any, tmp_path: Path) -> None:
    """The command a master runs to reset a virtualized builder's VM: once it exits 0, the
    builder is a new machine (idle, no build directory, nothing cached)."""
    farm = Farm(reactor, tmp_path / "caches", build_time=60)
    try:
        bob = await farm.start_builder("bob")
        bob.faults.leftover_build_dirs = True
        chroot = bob.cache.store(b"chroot")
        dsc = bob.cache.store(b"dsc")
        args = {
            "distribution": "ubuntu",
            "series": "hoary",
            "suite": "hoary",
            "ogrecomponent": "main",
        }
        bob.state.call("build", ("PACKAGEBUILD-1", "binarypackage", chroot, {"a_1.dsc": dsc}, args))
        bob.state.reset()  # a crash: the build directory stays
        assert bob.state.build_dirs == {"PACKAGEBUILD-1"}
        template = farm.vm_reset_command()
        argv = shlex.split(template % {"buildd_name": "bob", "vm_host": "bob"})
        # run as a master runs it: a process of its own, from elsewhere, no PYTHONPATH
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env, path="/")
        assert (code, err) == (0, b"")
        assert bob.state.build_dirs == frozenset() and not bob.cache.has(chroot)
        assert bob.state.state == "BuilderStatus.IDLE"
        argv[-1] = "nobody"
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env, path="/")
        assert code == 1 and b"no builder called 'nobody'" in err
    finally:
        await farm.stop()
