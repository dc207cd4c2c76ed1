"""``twistd slavesim``: its options, its service, and the real command."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.python import usage

from buildmaster.httpclient import HTTPClient
from slavesim import Outcome, OutcomeRule
from slavesim.tap import Options, makeService
from slavesim.testing import wait_for_no_tcp

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults() -> None:
    options = parse()
    assert (options["count"], options["port"], options["arch"]) == (1, 8221, ["amd64"])
    assert options["rules"] == []
    assert options["build-time"] == 3.0


def test_arch_is_repeatable_and_takes_comma_lists() -> None:
    assert parse("--arch", "amd64,i386", "--arch", "arm64")["arch"] == ["amd64", "i386", "arm64"]


def test_outcomes_are_parsed() -> None:
    options = parse("--outcomes", "hello*=DEPFAIL:3,*=OK:2")
    assert options["rules"] == [
        OutcomeRule(Outcome.DEPFAIL, package="hello*", duration=3.0),
        OutcomeRule(Outcome.OK, duration=2.0),
    ]


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--outcomes", "hello=SOMETIMES"], "unknown outcome 'SOMETIMES'"),
        (["--count", "0"], "--count must be at least 1"),
        (["--port", "65535", "--count", "2"], "beyond 65535"),
        (["--build-time", "-1"], "'-1' is not a number of seconds"),
        (["--count", "many"], "invalid literal"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        parse(*argv)


@pytest_twisted.ensureDeferred
async def test_service_starts_lists_and_stops(reactor: Any, tmp_path: Path) -> None:
    listing = tmp_path / "builders.jsonl"
    options = parse(
        "--count",
        "3",
        "--port",
        "0",
        "--arch",
        "i386",
        "--name-prefix",
        "frog",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--list",
        str(listing),
    )
    service = makeService(options)
    service.startService()
    try:
        # hundreds of builders share the process: its collector pauses them all, so the
        # set-up is frozen out of its passes and the young generation gets more room
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 10_000
        lines = [json.loads(line) for line in listing.read_text().splitlines()]
        assert [line["name"] for line in lines] == ["frog000", "frog001", "frog002"]
        assert all(line["arch_tags"] == ["i386"] for line in lines)
        from twisted.web.xmlrpc import Proxy

        for line in lines:
            info = await Proxy((line["url"] + "rpc").encode()).callRemote("info")
            assert info == ["1.0", "i386", ["binarypackage"]]
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
            "frog000",
            "frog001",
            "frog002",
        ]
    finally:
        await service.stopService()
    await wait_for_no_tcp(reactor)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("flag", [[], ["--no-fast-path"]])
async def test_no_fast_path_sends_every_request_through_twisted_web(
    reactor: Any, tmp_path: Path, flag: list[str]
) -> None:
    service = makeService(parse("--port", "0", "--cache-dir", str(tmp_path / "cache"), *flag))
    service.startService()
    client = HTTPClient(reactor)
    try:
        assert service.farm is not None
        (sim,) = service.farm.builders.values()
        body = xmlrpc.client.dumps(("hi",), "echo").encode()
        for _ in range(3):  # over one kept-alive connection
            response = await client.request(b"POST", sim.url + "rpc", body)
            assert response.body is not None
            assert xmlrpc.client.loads(response.body)[0][0] == ["hi"]
        assert sim.fast_answered == (0 if flag else 3)
    finally:
        client.close_idle()
        await service.stopService()
    await wait_for_no_tcp(reactor)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("flag", [[], ["--real-daemon"]])
async def test_real_daemon_switches_its_quirks_on(
    reactor: Any, tmp_path: Path, flag: list[str]
) -> None:
    service = makeService(parse("--port", "0", "--cache-dir", str(tmp_path / "cache"), *flag))
    service.startService()
    try:
        assert service.farm is not None
        (sim,) = service.farm.builders.values()
        quirks = (
            sim.faults.leftover_build_dirs,
            sim.faults.abort_sticks,
            sim.faults.unkillable_builds,
            sim.faults.blocking_downloads,
        )
        assert quirks == ((True,) * 4 if flag else (False,) * 4)
    finally:
        await service.stopService()
    await wait_for_no_tcp(reactor)


@pytest_twisted.ensureDeferred
async def test_service_removes_its_own_temporary_cache(reactor: Any, tmp_path: Path) -> None:
    service = makeService(parse("--port", "0"))
    service.startService()
    assert service.farm is not None
    cache_dir = service.farm.cache_dir
    assert cache_dir.is_dir()
    await service.stopService()
    assert not cache_dir.exists()
    await wait_for_no_tcp(reactor)


def test_twistd_slavesim_runs(tmp_path: Path) -> None:
    """The real command: ``twistd -n slavesim`` serves builders and stops on SIGTERM."""
    listing = tmp_path / "builders.jsonl"
    twistd = Path(sys.executable).parent / "twistd"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "slavesim", "--count", "2", "--port", "0"]
        + ["--outcomes", "*=OK:1", "--list", str(listing)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not listing.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "twistd did not write its builder list"
            time.sleep(0.05)
        builders = [json.loads(line) for line in listing.read_text().splitlines()]
        assert [b["name"] for b in builders] == ["sim000", "sim001"]
        for builder in builders:
            # A plain blocking client is fine here: this test runs no reactor of its own.
            with xmlrpc.client.ServerProxy(builder["url"] + "rpc") as proxy:
                status: Any = proxy.status()
                assert status["builder_status"] == "BuilderStatus.IDLE"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    # twistd ends itself with the signal that stopped it, after a clean shutdown.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Server Shut Down." in output
    assert "Builder sim001 listening on" in output
