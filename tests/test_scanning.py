"""The scan: parallel, independent, never dying; bad builders are judged, not crashed on.

Real PostgreSQL, real librarian over HTTP, simulated builders on real sockets.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from buildmaster.config import MasterConfig
from buildmaster.enums import (
    BuilderStatus,
    BuildStatus,
    PackagePublishingPocket,
    SourcePackageFileType,
)
from buildmaster.model import Build
from buildmaster.policy import FailurePolicy
from buildmaster.store import Store
from buildmaster.testing import advance, wait_for

FAST = MasterConfig(
    socket_timeout=5.0,
    virtualized_socket_timeout=5.0,
    scan_interval=3600,
    vm_resume_command="true %(vm_host)s",
)


@pytest_twisted.ensureDeferred
async def test_a_hung_builder_costs_only_its_own_timeout(
    reactor: Any, make_world: Any, clock: Any
) -> None:
    """The calls' deadlines are on the master's clock: the hung builder's scan waits until it
    has passed, while every other builder is scanned."""
    world = await make_world(FAST, master_clock=clock)
    sims = []
    for i in range(8):
        sim, _ = await world.builder(f"b{i}")
        sims.append(sim)
    sims[0].faults.hang = True
    master = world.harness.master

    scan = master.scan_all()
    await wait_for(reactor, lambda: len(master.workers) == 8, 60, "the workers")
    healthy = [w for w in master.workers.values() if w.builder.name != "b0"]
    hung = next(w for w in master.workers.values() if w.builder.name == "b0")
    # every other builder is scanned while the hung one is still waiting for its answer
    await wait_for(
        reactor, lambda: all(w.last_status is not None for w in healthy), 60, "healthy scans"
    )
    await wait_for(reactor, lambda: sims[0].history, 60, "the hung builder's status call")
    assert hung.busy and hung.last_status is None and not scan.called
    # a new cycle does not overlap the hung builder's scan in progress
    await master.scan_all(wait=False)
    await wait_for(reactor, lambda: not any(w.busy for w in healthy), 60, "the new cycle")
    clock.advance(FAST.socket_timeout - 0.001)
    assert hung.busy and not scan.called
    clock.advance(0.001)  # its deadline
    await scan
    assert [c.method for c in sims[0].history].count("status") == 1
    assert all(
        w.last_status and w.last_status.builder_status is BuilderStatus.IDLE for w in healthy
    )
    assert not hung.busy and hung.consecutive_failures == 1


@pytest_twisted.ensureDeferred
async def test_a_refusing_builder_is_failed_after_the_tolerated_scans(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    config = MasterConfig(
        socket_timeout=5.0,
        scan_interval=3600,
        failure_policy=FailurePolicy(tolerated_scan_failures=2, builder_disable_threshold=2),
    )
    world = await make_world(config)
    dead, dead_builder = await world.builder("dead")
    await world.builder("alive")
    dead.faults.refuse = True
    await dead.settled()
    master = world.harness.master
    for _ in range(3):
        await master.scan_all()
        assert (await store.builders.getByName("dead")).builderok  # tolerated, then counted once
    await master.scan_all()
    dead_builder = await store.builders.getByName("dead")
    assert dead_builder.builderok is False
    assert dead_builder.failnotes == "(111, 'Connection refused')"
    assert dead_builder.failed_by_master
    assert (
        f"dead ({dead.url}) marked as failed due to: (111, 'Connection refused')"
        in captured_log.warnings()
    )
    assert (await store.builders.getByName("alive")).builderok
    events = [e.kind for e in await store.events.for_builder(dead_builder.id)]
    assert events.count("failure") == 2 and events[-1] == "failed"


@pytest_twisted.ensureDeferred
async def test_garbage_wrong_protocol_and_wrong_arch_fail_the_probe(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST)
    xml, _ = await world.builder("xml")
    types, _ = await world.builder("types")
    huge, _ = await world.builder("huge")
    wrongarch = await world.harness.farm.start_builder("wrongarch", ("amd64",))
    await store.builders.new("wrongarch", wrongarch.url, [world.data.processor_386])
    await world.builder("good")
    xml.faults.garbage = "xml"
    types.faults.garbage = "types"
    huge.faults.garbage = "huge"
    huge.faults.huge_size = 40 * 1024 * 1024
    await world.harness.master.setupBuilders(world.data.hoary_i386)

    notes = {b.name: (b.builderok, b.failnotes or "") for b in await store.builders.all()}
    assert notes["good"] == (True, "")
    assert notes["xml"][0] is False and "malformed XML-RPC answer" in notes["xml"][1]
    assert notes["types"][0] is False and "echo" in notes["types"][1]
    assert notes["huge"][0] is False and "exceeds the limit" in notes["huge"][1]
    assert notes["wrongarch"] == (False, "architecture 'amd64', expected 'i386'")


@pytest_twisted.ensureDeferred
async def test_a_garbage_status_is_a_scan_failure_not_a_crash(
    reactor: Any, make_world: Any, store: Store
) -> None:
    config = MasterConfig(
        socket_timeout=5.0,
        scan_interval=3600,
        failure_policy=FailurePolicy(tolerated_scan_failures=0, builder_disable_threshold=1),
    )
    world = await make_world(config)
    liar, _ = await world.builder("liar")
    liar.faults.garbage = "types"
    await world.harness.master.scan_all()
    liar_builder = await store.builders.getByName("liar")
    assert liar_builder.builderok is False
    assert liar_builder.failnotes is not None and "builder_status" in liar_builder.failnotes


@pytest_twisted.ensureDeferred
async def test_a_queued_build_is_dispatched_at_once_to_an_idle_builder(
    reactor: Any, make_world: Any, store: Store, clock: Any
) -> None:
    world = await make_world(FAST, master_clock=clock)
    sim, _ = await world.builder("eager")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(
        reactor, lambda: master.workers and all(w.last_status for w in master.workers.values()), 60
    )

    # the master's clock never moves: no tick will come, only the notification can bring
    # the build to the builder
    build = await world.queue()
    await wait_for(reactor, lambda: sim.state.build_id == build.cookie, 60, "the dispatch")
    await wait_for(reactor, lambda: _status(store, build), 60, "BUILDING in the database")


async def _status(store: Store, build: Build) -> bool:
    return (await store.builds.get(build)).status is BuildStatus.BUILDING


@pytest_twisted.ensureDeferred
async def test_a_builder_that_becomes_idle_gets_its_next_job_in_the_same_scan(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST, build_time=0.2)
    sim, builder = await world.builder("busy")
    first = await world.queue()
    second = await world.queue()
    master = world.harness.master
    await master.scan_all()
    assert sim.state.build_id == first.cookie
    await wait_for(
        reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the first build to end"
    )
    # one scan: collect the first build, clean the builder, dispatch the second
    await master.scan_all()
    assert (await store.builds.get(first)).status is BuildStatus.FULLYBUILT
    assert sim.state.build_id == second.cookie
    assert (await store.builds.get(second)).status is BuildStatus.BUILDING
    calls = [c.method for c in sim.history]
    assert calls[-5:] == ["status", "clean", "ensurepresent", "ensurepresent", "build"] or calls[
        -4:
    ] == [
        "clean",
        "ensurepresent",
        "ensurepresent",
        "build",
    ]


@pytest_twisted.ensureDeferred
async def test_the_scan_loop_survives_everything(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    config = MasterConfig(
        socket_timeout=2.0,
        scan_interval=0.2,
        failure_policy=FailurePolicy(tolerated_scan_failures=100),
    )
    world = await make_world(config, build_time=0.2)
    bad = []
    for kind in ("xml", "types", "huge"):
        sim, _ = await world.builder(kind)
        sim.faults.garbage = kind
        bad.append(sim)
    hung, _ = await world.builder("hung")
    hung.faults.hang = True
    good, _ = await world.builder("good")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    builds = [await world.queue() for _ in range(3)]
    for build in builds:

        def built(build: Build = build) -> Any:
            return _fullybuilt(store, build)

        await wait_for(
            reactor,
            built,
            30,
            f"{build.cookie} to be built",
        )
    assert master._scan_loop.running


async def _fullybuilt(store: Store, build: Build) -> bool:
    return (await store.builds.get(build)).status is BuildStatus.FULLYBUILT


@pytest_twisted.ensureDeferred
async def test_a_ppa_job_never_reaches_a_trusted_builder(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST)
    trusted, _ = await world.builder("trusted")
    virtual, _ = await world.builder("virtual", virtualized=True)
    ppa_build = await world.queue(ppa=True)
    primary_build = await world.queue()
    await world.harness.master.scan_all()
    assert trusted.state.build_id == primary_build.cookie
    assert virtual.state.build_id == ppa_build.cookie


@pytest_twisted.ensureDeferred
async def test_a_burst_of_jobs_reaches_every_idle_builder_at_once(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST)
    sims = [(await world.builder(f"idle{i}"))[0] for i in range(6)]
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(
        reactor,
        lambda: len(master.workers) == 6 and all(w.idle for w in master.workers.values()),
        60,
    )
    # six builds, queued by one statement: one notification says "six"
    builds = []
    for i in range(6):
        spr = await store.sources.new(f"burst{i}", "1.0", world.data.hoary)
        dsc = await world.harness.add_file(f"burst{i}_1.0.dsc", b"Source: burst\n", "text/plain")
        await store.sources.add_file(spr, dsc.id, SourcePackageFileType.DSC)
        builds.append(
            await store.builds.createBuild(
                spr, world.data.hoary_i386, PackagePublishingPocket.RELEASE, world.data.primary
            )
        )
    await store.db.execute(
        "INSERT INTO buildqueue (build, lastscore, processor, virtualized)"
        " SELECT id, 1000, processor, virtualized FROM build WHERE id = ANY(%s)",
        ([b.id for b in builds],),
    )
    await wait_for(
        reactor, lambda: all(sim.state.build_id for sim in sims), 60, "every builder to build"
    )
    assert {sim.state.build_id for sim in sims} == {b.cookie for b in builds}


@pytest_twisted.ensureDeferred
async def test_the_version_builders_report_is_recorded(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST)
    for i in range(3):
        await world.builder(f"v{i}")
    await world.harness.master.scan_all()
    await world.harness.master.logtails.flush()  # written in one batch
    versions = {b.name: b.version for b in await store.builders.all()}
    assert versions == {"v0": "slavesim-0.1", "v1": "slavesim-0.1", "v2": "slavesim-0.1"}


def _polls(sim: Any) -> int:
    return sum(1 for call in sim.history if call.method == "status")


@pytest_twisted.ensureDeferred
async def test_the_scan_interval_is_sliced_so_polls_come_spread_not_in_a_burst(
    reactor: Any, make_world: Any, clock: Any
) -> None:
    """Each builder is polled once per interval, as before, but the farm's polls are spread
    over the interval (a burst of polls would also bunch up the finished builds they find)."""
    world = await make_world(MasterConfig(scan_interval=1.0), master_clock=clock)
    sims = [(await world.builder(f"s{i}"))[0] for i in range(20)]
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(reactor, lambda: not master.scans_under_way, 60, "the scan at start")
    assert [_polls(sim) for sim in sims] == [1] * 20  # everyone, once, at start
    first_poll: dict[str, int] = {}
    for tick in range(3 * 20):  # three intervals of 20 slices of 0.05 s
        await advance(reactor, clock, master, 0.05)
        for sim in sims:
            if _polls(sim) == 2:
                first_poll.setdefault(sim.name, tick)
    # one poll at start, then one per interval (never one per slice)
    assert [_polls(sim) for sim in sims] == [4] * 20
    # spread: each slice of the first interval polled one builder, not all of them at once
    assert sorted(first_poll.values()) == list(range(20))


@pytest_twisted.ensureDeferred
async def test_a_long_build_is_polled_less_often_and_its_end_still_noticed(
    reactor: Any, make_world: Any, store: Store, clock: Any
) -> None:
    """Periodic scans poll a building builder less often the longer its build runs (here:
    after as long as it has run, up to 1 s); cancelling is acted on at the next
    scan whatever the poll schedule says; the end of a build is noticed. The master and the
    builder share one clock, moved by the test."""
    config = MasterConfig(scan_interval=0.05, building_poll_fraction=1.0, building_poll_max=1.0)
    world = await make_world(config, build_time=1.5, farm_clock=clock, master_clock=clock)
    sim, _ = await world.builder("long")
    build = await world.queue("long")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(reactor, lambda: not master.scans_under_way, 60, "the scan at start")
    assert sim.state.build_id == build.cookie
    polls_before = _polls(sim)
    for _ in range(24):  # 1.2 s of the build
        await advance(reactor, clock, master, 0.05)
    polls = _polls(sim) - polls_before
    # every scan would be 24 polls in 1.2 s. Backing off with the build's age (a delay of
    # its whole age, here): one at the next scan, then none until the delay reaches its
    # 1 s maximum
    assert polls == 2, polls

    async def finished() -> bool:
        return (await store.builds.get(build.id)).status is BuildStatus.FULLYBUILT

    for _ in range(60):  # the build ends at 1.5 s; polls are up to 1 s apart by then
        await advance(reactor, clock, master, 0.05)
        if await finished():
            break
    assert await finished()

    # a cancel is seen at the next scan, not at the next due poll
    other = await world.queue("other")
    world.harness.farm.build_time = 3600
    for _ in range(40):
        await advance(reactor, clock, master, 0.05)
        if sim.state.build_id == other.cookie:
            break
    assert sim.state.build_id == other.cookie
    for _ in range(40):  # 2 s: polls are 1 s apart now
        await advance(reactor, clock, master, 0.05)
    # cancel just after a poll: the next one is not due for about a second
    polled = _polls(sim)
    while _polls(sim) == polled:
        await advance(reactor, clock, master, 0.05)
    await store.jobs.cancel(other.id)
    await advance(reactor, clock, master, 0.05)  # one scan
    assert any(c.method == "abort" for c in sim.history)


@pytest_twisted.ensureDeferred
async def test_an_unresolvable_builder_host_is_failed_like_a_refused_one(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    """A builder whose host name does not resolve is judged like one that refuses
    connections: its failed scans are counted, then it is marked failed with the reason."""
    config = MasterConfig(
        socket_timeout=5.0,
        scan_interval=3600,
        failure_policy=FailurePolicy(tolerated_scan_failures=1, builder_disable_threshold=1),
    )
    world = await make_world(config)
    url = "http://nowhere.invalid:8221/"
    await store.builders.new("nowhere", url, [world.data.processor_386])
    await world.builder("alive")
    master = world.harness.master
    await master.scan_all()  # tolerated
    assert (await store.builders.getByName("nowhere")).builderok
    await master.scan_all()
    nowhere = await store.builders.getByName("nowhere")
    assert nowhere.builderok is False and nowhere.failed_by_master
    assert nowhere.failnotes is not None and "nowhere.invalid" in nowhere.failnotes
    assert any(
        w.startswith(f"nowhere ({url}) marked as failed due to: ") and "nowhere.invalid" in w
        for w in captured_log.warnings()
    )
    assert (await store.builders.getByName("alive")).builderok


@pytest_twisted.ensureDeferred
async def test_an_unresolvable_builder_host_fails_the_probe(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    world = await make_world(FAST)
    await store.builders.new("nowhere", "http://nowhere.invalid:8221/", [world.data.processor_386])
    await world.builder("good")
    await world.harness.master.setupBuilders(world.data.hoary_i386)
    notes = {b.name: (b.builderok, b.failnotes or "") for b in await store.builders.all()}
    assert notes["good"] == (True, "")
    assert notes["nowhere"][0] is False and "nowhere.invalid" in notes["nowhere"][1]
    assert any("nowhere" in w and "marked as failed" in w for w in captured_log.warnings())
