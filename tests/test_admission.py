"""How many finished builds the master takes on at once (buildmaster.admission).

The counting rules alone (a fake clock, plain asserts), then the master with real builders,
a real database and librarian: finished builds beyond the limit wait their turn and are all
collected; a slow collection stops holding the others up after its lease; a collection is
over once its builder has its next build.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from buildmaster.admission import Admission
from buildmaster.config import MasterConfig
from buildmaster.enums import BuildStatus
from buildmaster.store import Store
from buildmaster.store.database import Database
from buildmaster.testing import advance, wait_for
from slavesim import Outcome, OutcomeRule


class Freed:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def admission(limit: int, lease: float = 2.0) -> tuple[Admission, task.Clock, Freed]:
    clock, freed = task.Clock(), Freed()
    return Admission(clock, limit, lease, freed), clock, freed


def test_without_a_limit_nothing_waits_or_counts() -> None:
    gate, clock, freed = admission(0)
    for key in range(100):
        gate.poll_started(key)
        gate.collection_started(key)
        assert gate.may_poll()
    assert (gate.collections, gate.polls, gate.peak) == (0, 0, 0)
    assert not clock.getDelayedCalls()


def test_polls_wait_while_the_collections_fill_the_limit() -> None:
    gate, _, freed = admission(2)
    gate.collection_started("a")
    assert gate.may_poll()
    gate.collection_started("b")
    assert not gate.may_poll()
    gate.collection_ended("a")
    assert freed.count == 1 and gate.may_poll()
    assert gate.peak == 2


def test_polls_count_by_the_share_of_polls_that_found_a_finished_build() -> None:
    gate, _, freed = admission(4)
    # at first every poll may find one: four polls in flight fill the limit
    for key in range(3):
        gate.poll_started(key)
    assert gate.may_poll()
    gate.poll_started(3)
    assert not gate.may_poll()
    # polls that find builders still building make a poll weigh less ...
    for key in range(4):
        gate.poll_answered(key, finished=False)
    assert freed.count == 4 and gate.share == pytest.approx(0.9**4)
    for _ in range(40):
        gate.poll_started("x")
        gate.poll_answered("x", finished=False)
    assert gate.share < 0.02
    for key in range(100):
        gate.poll_started(key)
    assert gate.polls == 100 and gate.may_poll()  # a busy farm is polled at once
    # ... and polls that find finished builds weigh more again
    for key in range(100):
        gate.poll_answered(key, finished=True)
    assert gate.share > 0.99
    for key in range(3):
        gate.poll_started(key)
    assert gate.may_poll()
    gate.poll_started(3)
    assert not gate.may_poll()


def test_a_lease_ends_what_takes_too_long() -> None:
    gate, clock, freed = admission(1, lease=2.0)
    gate.collection_started("slow")
    assert not gate.may_poll()
    clock.advance(1.9)
    assert not gate.may_poll()
    clock.advance(0.1)
    assert freed.count == 1 and gate.collections == 0 and gate.may_poll()
    gate.collection_ended("slow")  # when it does end: nothing more to free
    assert freed.count == 1
    # a poll that gets no answer stops counting too, and its late answer still teaches
    gate.poll_started("hung")
    assert not gate.may_poll()
    clock.advance(2.0)
    assert freed.count == 2 and gate.polls == 0 and gate.may_poll()
    gate.poll_answered("hung", finished=False)
    assert gate.share == pytest.approx(0.9) and freed.count == 3  # a lighter poll: room?
    gate.poll_done("hung")  # the scan's end after the answer: nothing left to do
    assert freed.count == 3 and not clock.getDelayedCalls()


def test_ending_early_cancels_the_lease() -> None:
    gate, clock, freed = admission(3)
    gate.poll_started("a")
    gate.collection_started("b")
    gate.poll_done("a")
    gate.collection_ended("b")
    assert not clock.getDelayedCalls() and freed.count == 2
    gate.poll_started("c")
    gate.collection_started("d")
    gate.clear()
    assert not clock.getDelayedCalls() and gate.polls == 0 and gate.collections == 0


@pytest.mark.parametrize(("limit", "peak"), [(2, 2), (100, 6)])
@pytest_twisted.ensureDeferred
async def test_finished_builds_beyond_the_limit_wait_their_turn_and_are_all_collected(
    reactor: Any, make_world: Any, store: Store, limit: int, peak: int
) -> None:
    """Six builders finish at once; the periodic scan finds them all due. With a limit of
    two, two are polled and collected at a time, the others as room is made; with room for
    all, all six at once. Every build ends FULLYBUILT either way."""
    config = MasterConfig(
        scan_interval=3600, building_poll_fraction=0, max_collections=limit, socket_timeout=5
    )
    world = await make_world(config, build_time=0.05)
    sims = [(await world.builder(f"f{i}"))[0] for i in range(6)]
    builds = [await world.queue() for _ in sims]
    master = world.harness.master
    await master.scan_all()  # dispatches the six builds
    assert {sim.state.build_id for sim in sims} == {b.cookie for b in builds}
    await wait_for(reactor, lambda: all(s.state.state == "BuilderStatus.WAITING" for s in sims), 60)
    await master.scan_all(wait=False, only_due=True)  # what the scan loop runs

    async def all_built() -> bool:
        states = [(await store.builds.get(b.id)).status for b in builds]
        return states == [BuildStatus.FULLYBUILT] * 6

    await wait_for(reactor, all_built, 60, "the six builds collected")
    assert master.admission.peak == peak
    await wait_for(reactor, lambda: not any(w.busy for w in master.workers.values()), 60)
    assert master.admission.collections == 0 and master.admission.polls == 0


@pytest.mark.parametrize("lease", [0.3, 30.0])
@pytest_twisted.ensureDeferred
async def test_a_slow_collection_holds_the_others_up_only_for_its_lease(
    reactor: Any, make_world: Any, store: Store, clock: Any, lease: float
) -> None:
    """One collection at a time. The first build to finish is collected by a builder whose
    answer to clean() takes 3 s; the other build, finished meanwhile, is collected once the
    slow one's lease is over, not after it (with a lease longer than that: after it). The
    master and the builders share one clock, moved by the test."""
    config = MasterConfig(
        scan_interval=0.1,
        building_poll_fraction=0,
        max_collections=1,
        collection_lease=lease,
        socket_timeout=10,
    )
    world = await make_world(config, build_time=1.0, farm_clock=clock, master_clock=clock)
    slow, _ = await world.builder("slow")
    quick, _ = await world.builder("quick")
    slow.rules = [OutcomeRule(Outcome.OK, duration=0.2)]
    slow.faults.withhold_answer = {"clean": 3.0}
    first, second = await world.queue(), await world.queue()
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(reactor, lambda: not master.scans_under_way, 60, "the scan at start")
    assert slow.state.build_id and quick.state.build_id
    quick_build = first if quick.state.build_id == first.cookie else second

    started = clock.seconds()
    while not any(c.method == "clean" for c in slow.history):
        assert clock.seconds() - started < 10, "the slow builder was never cleaned"
        await advance(reactor, clock, master, 0.05, still_busy=["slow"])
    slow_worker = next(w for w in master.workers.values() if w.builder.name == "slow")

    async def quick_done() -> bool:
        return (await store.builds.get(quick_build.id)).status is BuildStatus.FULLYBUILT

    while not await quick_done():
        assert clock.seconds() - started < 20, "the quick builder's build was never collected"
        await advance(reactor, clock, master, 0.05, still_busy=["slow"])
    if lease < 1:
        assert slow_worker.busy  # still waiting for the answer to its clean()
        assert clock.seconds() - started < 3  # which comes 3 s after it was sent
    else:
        assert not slow_worker.busy  # the quick build waited for the slow collection


@pytest_twisted.ensureDeferred
async def test_a_collection_stops_counting_once_its_builder_has_its_next_build(
    reactor: Any, make_world: Any, store: Store, dsn: str
) -> None:
    """The hand-over ends with the next ``build()``: the record of the dispatch after it is
    bookkeeping, and a slow one does not hold up the next collection. Here another
    transaction locks the next build's row, so its dispatch record waits; the builder is
    already building it and the collection no longer counts against the limit of one."""
    config = MasterConfig(
        scan_interval=3600,
        building_poll_fraction=0,
        max_collections=1,
        collection_lease=60,  # longer than the test: only the hand-over ends the count
        socket_timeout=5,
    )
    world = await make_world(config, build_time=0.05)
    sim, _ = await world.builder("f0")
    first = await world.queue()
    master = world.harness.master
    await master.scan_all()
    assert sim.state.build_id == first.cookie
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60)
    second = await world.queue()

    other_db = Database(reactor, dsn, size=1)
    await other_db.connect()
    locked: defer.Deferred[None] = defer.Deferred()
    release: defer.Deferred[None] = defer.Deferred()

    async def hold_the_row(tx: Any) -> None:
        await tx.execute("SELECT 1 FROM build WHERE id = %s FOR UPDATE", (second.id,))
        locked.callback(None)
        await release

    holding = other_db.transaction(hold_the_row)
    try:
        await wait_for(reactor, lambda: locked.called, 60, "the next build's row locked")
        await master.scan_all(wait=False, only_due=True)  # finds the first build finished
        await wait_for(reactor, lambda: sim.state.build_id == second.cookie, 60, "next build()")
        await wait_for(reactor, lambda: master.admission.collections == 0, 60, "collection over")
        # the dispatch is not recorded yet: its statement waits for the lock
        assert (await store.builds.get(second.id)).status is BuildStatus.NEEDSBUILD
        assert (await store.builds.get(first.id)).status is BuildStatus.FULLYBUILT
    finally:
        release.callback(None)
        await holding
        await other_db.close()

    async def building() -> bool:
        return (await store.builds.get(second.id)).status is BuildStatus.BUILDING

    await wait_for(reactor, building, 60, "the dispatch recorded")
