"""Fencing: a master whose database session goes silent gives its builders up within its
lease, before the server can end that session and free their locks; masters share the farm.

The lease runs on a ``task.Clock``; the database is real, reached through a TCP relay that
can go silent (:mod:`tcp_relay`)."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest_twisted
from tcp_relay import Relay, relayed_dsn
from twisted.internet import task

from buildmaster.ownership import Ownership
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Database, Store
from buildmaster.testing import wait_for


async def _builders(store: Store, count: int) -> list[int]:
    data = await load_sample_data(store)
    for name in ("bob", "frog"):  # the sample's own: only ours are active
        await store.builders.set_active(await store.builders.getByName(name), False)
    return [
        (await store.builders.new(f"f{i}", f"http://f{i}:8221/", [data.processor_386])).id
        for i in range(count)
    ]


@pytest_twisted.ensureDeferred
async def test_a_silent_session_gives_the_builders_up_at_the_end_of_its_lease(
    reactor: Any, store: Store, dsn: str, captured_log: Any
) -> None:
    ids = await _builders(store, 4)
    path, through = relayed_dsn(dsn)
    relay = Relay(path)
    db = Database(reactor, through.format(port=relay.port), size=1)
    rival_db = Database(reactor, dsn, size=1)
    await db.connect()
    await rival_db.connect()
    clock = task.Clock()
    lost: list[float] = []
    ours = Ownership(db, True, lambda: lost.append(clock.seconds()), clock=clock, lease=10)
    rival = Ownership(rival_db, True, lambda: None, clock=task.Clock(), lease=10)
    try:
        await ours.start()  # confirmed at 0
        assert await ours.acquire(ids) == set(ids)
        epoch = ours.epoch
        clock.advance(2)  # a renewal, answered: confirmed at 2
        await wait_for(reactor, lambda: ours.confirmed_at == 2, 30, "the renewal")
        assert await rival.acquire(ids) == set()  # ours holds them

        relay.blackhole()
        clock.advance(2)  # the renewal sent at 4 is never answered
        clock.advance(7.99)  # 11.99: still within the lease of the statement sent at 2
        assert lost == [] and all(ours.still(b, epoch) for b in ids)
        clock.advance(0.01)  # 12 = 2 + lease
        assert lost == [12.0]
        assert ours.owned == set() and not any(ours.still(b, epoch) for b in ids)
        assert any("did not answer within its lease (10 s)" in w for w in captured_log.warnings())
        ours.stop()

        # the server still holds the session (it has not given up on the silent client)...
        assert await rival.acquire(ids) == set()
        # ...until it ends it (what its keepalives do after 2 x lease): then they are free
        relay.drop_servers()

        async def rival_has_them() -> bool:
            return await rival.acquire(ids) == set(ids)

        await wait_for(reactor, rival_has_them, 30, "the rival to take the builders")
    finally:
        ours.stop()
        await db.close()
        await rival_db.close()
        relay.close()


@pytest_twisted.ensureDeferred
async def test_a_slow_answer_renews_the_lease_from_when_it_was_asked(
    reactor: Any, store: Store, dsn: str
) -> None:
    """The session is known alive when the statement was sent, not when its answer came."""
    ids = await _builders(store, 2)
    db = Database(reactor, dsn, size=1)
    await db.connect()
    clock = task.Clock()
    lost: list[float] = []
    ours = Ownership(db, True, lambda: lost.append(clock.seconds()), clock=clock, lease=10)
    try:
        await ours.start()
        await ours.acquire(ids)
        clock.advance(2)  # sent at 2; its answer comes while the clock stands still
        await wait_for(reactor, lambda: ours.confirmed_at == 2, 30, "the renewal")
        clock.advance(9.99)  # no renewal answered since (the clock ran, the reactor did not)
        assert lost == []
        clock.advance(0.01)
        assert lost == [12.0] and ours.owned == set()
    finally:
        ours.stop()
        await db.close()


@pytest_twisted.ensureDeferred
async def test_the_server_keeps_a_silent_session_twice_as_long_as_the_lease(
    reactor: Any, db: Database
) -> None:
    """The session's own TCP keepalives and user timeout (set at its start): the server
    ends it no sooner than 2 x lease after the client fell silent."""
    db.fence_session(10)
    rows = await db.session_query(
        "SELECT name, reset_val, source FROM pg_settings WHERE name IN ('tcp_keepalives_idle',"
        " 'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout')"
    )
    settings = {name: int(value) for name, value, _ in rows}
    assert {source for _, _, source in rows} == {"client"}
    idle, interval, count = (settings[f"tcp_keepalives_{k}"] for k in ("idle", "interval", "count"))
    assert idle + interval * count >= 20 and idle >= 10  # seconds
    assert settings["tcp_user_timeout"] == 20_000  # ms
    # the pool's connections keep the server's defaults
    [(source,)] = await db.query("SELECT source FROM pg_settings WHERE name = 'tcp_user_timeout'")
    assert source == "default"


def _every_one(own: Ownership) -> list[int]:
    return sorted(own.owned)


def _renewed(own: Ownership) -> bool:
    return not own._renewing


@pytest_twisted.ensureDeferred
async def test_masters_share_the_builders_and_a_newcomer_gets_its_part(
    reactor: Any, store: Store, dsn: str
) -> None:
    ids = await _builders(store, 7)
    pools = [Database(reactor, dsn, size=1) for _ in range(3)]
    clocks = [task.Clock() for _ in pools]
    masters: list[Ownership] = []
    for pool, clock in zip(pools, clocks, strict=True):
        await pool.connect()
        own = Ownership(pool, True, lambda: None, clock=clock, lease=10)
        own._releasable = functools.partial(_every_one, own)  # all idle
        masters.append(own)
    try:

        async def round_of(active: list[int]) -> None:
            """Every active master renews (counts the others, gives back) and then scans."""
            for i in active:
                clocks[i].advance(2)
                renewed = functools.partial(_renewed, masters[i])
                await wait_for(reactor, renewed, 30, "the renewal")
            for i in active:
                await masters[i].acquire(ids)

        await masters[0].start()
        await masters[0].acquire(ids)
        assert masters[0].owned == set(ids)  # alone: all of them
        await masters[1].start()
        await round_of([0, 1])
        await round_of([0, 1])
        assert [len(m.owned) for m in masters[:2]] == [4, 3]  # ceil(7 / 2) each at most
        await masters[2].start()
        for _ in range(3):
            await round_of([0, 1, 2])
        held = [m.owned for m in masters]
        assert all(0 < len(h) <= math.ceil(7 / 3) for h in held), held
        assert set().union(*held) == set(ids) and sum(len(h) for h in held) == 7
    finally:
        for own in masters:
            own.stop()
        for pool in pools:
            await pool.close()
