"""The whole master as one embeddable service: start order, web tree, stop order."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import pytest_twisted

from buildmaster.config import MasterConfig
from buildmaster.httpclient import HTTPClient
from buildmaster.service import BuildmasterService, ServiceSettings, StartupError
from buildmaster.testing import wait_for


@pytest_twisted.ensureDeferred
async def test_the_service_starts_in_order_serves_and_stops(
    reactor: Any, dsn: str, tmp_path: Path
) -> None:
    settings = ServiceSettings(
        state_dir=tmp_path / "state",
        dsn=dsn,
        port="tcp:0:interface=127.0.0.1",
        master=MasterConfig(scan_interval=3600),
    )
    service = BuildmasterService(reactor, settings)
    service.startService()
    await service.when_ready()
    assert service.master is not None and service.master.running
    assert service.librarian is not None and service.store is not None
    base = f"http://127.0.0.1:{service.web.getHost().port}/"
    assert service.librarian.public_url == base + "librarian/"
    http = HTTPClient(reactor)
    try:
        index = await http.request(b"GET", base)
        assert index.status == 200 and b"/librarian/" in (index.body or b"")
        missing = await http.request(b"GET", base + "no/such/page")
        assert missing.status == 404
        content = b"hello, builders\n"
        alias = await service.librarian.addFile(
            "hello.txt", len(content), io.BytesIO(content), "text/plain"
        )
        fetched = await http.request(b"GET", await service.librarian.getURL(alias))
        assert (fetched.status, fetched.body) == (200, content)
    finally:
        http.close_idle()
    await service.stopService()
    assert not service.master.running
    # the web server is closed and the database pool too
    refused = HTTPClient(reactor)
    try:
        await refused.request(b"GET", base, timeout=2)
    except Exception as e:
        assert "refused" in str(e).lower() or "Connection" in type(e).__name__
    else:
        raise AssertionError("the web server still answers")


@pytest_twisted.ensureDeferred
async def test_a_database_that_never_answers_fails_the_start_on_time(
    reactor: Any, tmp_path: Path, captured_log: Any
) -> None:
    captured_log.allow_errors(StartupError)
    with socket.socket() as silent:  # connections are accepted (by the kernel), never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        errors: list[BaseException] = []
        service = BuildmasterService(
            reactor,
            ServiceSettings(
                state_dir=tmp_path,
                dsn=f"host=127.0.0.1 port={port} dbname=buildmaster",
                connect_timeout=0.5,
            ),
            on_fatal=errors.append,
        )
        service.startService()
        await wait_for(reactor, lambda: errors, timeout=60, what="the start to fail")
        await service.stopService()
    [error] = errors
    assert str(error) == (
        f"the database (dbname=buildmaster host=127.0.0.1 port={port}) did not answer within"
        " 0.5 s: check --dsn and the network"
    )
