"""A database outage in the log: one line when it begins, one a minute while it lasts, one
when it ends; the loops that hit it meanwhile stay quiet."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task, threads
from twisted.logger import LogLevel

from buildmaster.config import MasterConfig
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Database, DatabaseUnavailable, Store
from buildmaster.store.cluster import PostgresCluster
from buildmaster.store.database import OutageLog
from buildmaster.testing import FarmHarness, wait_for


def _lines(captured_log: Any) -> list[tuple[LogLevel, str]]:
    from twisted.logger import formatEvent

    return [
        (e["log_level"], formatEvent(e))
        for e in captured_log.events
        if e.get("log_namespace", "").endswith("OutageLog")
    ]


def test_the_outage_log_says_when_it_begins_every_minute_and_when_it_ends(
    captured_log: Any,
) -> None:
    clock = task.Clock()
    outage = OutageLog(clock)
    for connection in ("a", "b", "c"):  # the pool's connections go one after the other
        outage.lost(connection, "server closed the connection unexpectedly")
        clock.advance(0.25)
    for _ in range(4 * 59):  # each reconnects four times a second, in vain
        outage.failed_again("connection refused")
        clock.advance(0.25)
    assert outage.unavailable
    assert _lines(captured_log) == [
        (
            LogLevel.warn,
            "Lost the database (server closed the connection unexpectedly); reconnecting",
        )
    ]
    clock.advance(1.0)
    assert _lines(captured_log)[1:] == [
        (LogLevel.warn, "The database is still away after 1 min (connection refused); reconnecting")
    ]
    clock.advance(60.0)
    assert len(_lines(captured_log)) == 3 and "after 2 min" in _lines(captured_log)[2][1]
    outage.recovered("a")
    outage.recovered("b")
    assert len(_lines(captured_log)) == 3 and outage.unavailable  # c is still away
    clock.advance(30.0)
    outage.recovered("c")
    assert _lines(captured_log)[3:] == [(LogLevel.info, "The database is back after 151 s")]
    assert not outage.unavailable
    assert clock.getDelayedCalls() == []


@pytest.fixture(scope="module")
def stoppable_cluster() -> Iterator[PostgresCluster]:
    """A cluster the tests stop and start again (not removed when it stops)."""
    directory = Path(tempfile.mkdtemp(prefix="buildmaster-pg-"))
    cluster = PostgresCluster(directory=directory, fsync=False)
    cluster.start()
    try:
        subprocess.run(
            [sys.executable, "-m", "buildmaster.store.schema", "--dsn", cluster.dsn()],
            check=True,
            capture_output=True,
        )
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _outage(reactor: Any, cluster: PostgresCluster, db: Database, seconds: float) -> None:
    """Stop the server for ``seconds``, asking the database something all the while (as the
    master's loops would), then start it again and wait until the pool is back."""
    await threads.deferToThread(cluster.stop)
    failures: list[DatabaseUnavailable] = []
    deadline = reactor.seconds() + seconds
    while reactor.seconds() < deadline:
        try:
            await db.query("SELECT 1")
        except DatabaseUnavailable as e:
            failures.append(e)
        await task.deferLater(reactor, 0.05, lambda: None)
    assert failures and all(db.explains(e) for e in failures)
    await threads.deferToThread(cluster.start)
    await wait_for(reactor, lambda: not db.unavailable, timeout=60, what="the database back")
    assert await db.query("SELECT 1") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_a_pool_logs_an_outage_once(
    reactor: Any, stoppable_cluster: PostgresCluster, captured_log: Any
) -> None:
    db = Database(reactor, stoppable_cluster.dsn(), size=3)
    await db.connect()
    await db.listen("ping", lambda payload: None)
    try:
        await _outage(reactor, stoppable_cluster, db, 3.0)
    finally:
        await db.close()
    warnings = captured_log.warnings()
    assert len(warnings) == 1 and warnings[0].startswith("Lost the database ("), warnings
    assert sum(m.startswith("The database is back after") for m in captured_log.messages()) == 1


@pytest_twisted.ensureDeferred
async def test_a_master_scanning_through_an_outage_logs_it_once(
    reactor: Any, stoppable_cluster: PostgresCluster, captured_log: Any, tmp_path: Path
) -> None:
    db = Database(reactor, stoppable_cluster.dsn(), size=4)
    await db.connect()
    store = Store(db)
    data = await load_sample_data(store)
    # the seed's jobs and builders are not part of this
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    for name in ("bob", "frog"):
        await store.builders.set_active(await store.builders.getByName(name), False)
    harness = await FarmHarness.start(
        reactor, store, tmp_path, MasterConfig(scan_interval=0.2, socket_timeout=5.0)
    )
    try:
        for i in range(4):
            sim = await harness.start_builder(f"outage{i}")
            await store.builders.new(f"outage{i}", sim.url, [data.processor_386])
        harness.master.startService()
        await harness.master.when_ready()
        await task.deferLater(reactor, 0.5, lambda: None)  # a few scans of every builder
        await _outage(reactor, stoppable_cluster, db, 3.0)
        await task.deferLater(reactor, 0.5, lambda: None)  # scanning again
    finally:
        await harness.stop()
        await db.close()
    warnings = captured_log.warnings()
    assert len(warnings) == 1 and warnings[0].startswith("Lost the database ("), warnings
    assert sum(m.startswith("The database is back after") for m in captured_log.messages()) == 1
