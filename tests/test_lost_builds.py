"""Builders that lose builds, and builders stuck in states that never end (real sockets, real
PostgreSQL, slavesim with the real daemon's quirks; the master's and the builders' time on a
Clock where a timeout matters).

The crash story: a builder daemon restarted in the middle of a build says IDLE; the lost
build goes back to the queue; sent again to the same builder, the real daemon switches to
BUILDING and faults (the build's directory survived the crash); told to abort, it answers
ABORTING for ever. A lost build must not go back to the builder that lost it until that
builder is known clean, a state that does not end must end in a builder failure an operator
can act on (or a VM reset), and no build may run on two builders at once.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import task

from buildmaster.config import MasterConfig
from buildmaster.enums import BuilderCleanStatus, BuildStatus
from buildmaster.policy import FailurePolicy
from buildmaster.store import Store
from buildmaster.testing import wait_for

BUILDING = "BuilderStatus.BUILDING"
ABORTING = "BuilderStatus.ABORTING"
IDLE = "BuilderStatus.IDLE"
ARGS = {"distribution": "ubuntu", "series": "hoary", "suite": "hoary", "ogrecomponent": "main"}
#: a master scanning often, that disables a builder after three failures
LOSING = MasterConfig(
    socket_timeout=5.0, scan_interval=0.2, failure_policy=FailurePolicy(builder_disable_threshold=3)
)


def clocked(reactor: Any, **kw: Any) -> tuple[task.Clock, MasterConfig]:
    """A Clock at the wall clock's time, and a master's config that never scans by itself."""
    clock = task.Clock()
    clock.advance(reactor.seconds())
    base: dict[str, Any] = dict(
        socket_timeout=5.0, virtualized_socket_timeout=5.0, scan_interval=3600.0
    )
    base.update(kw)
    return clock, MasterConfig(**base)


class DoubleRuns:
    """Watches the builders' true state (not what they report) on every reactor turn it
    gets: no build may ever be BUILDING on two builders at once."""

    def __init__(self, reactor: Any, sims: Iterable[Any]) -> None:
        self.sims = list(sims)
        self.seen: list[tuple[str, list[str]]] = []
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(0.001)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        building = collections.defaultdict(list)
        for sim in self.sims:
            if sim.state.state == BUILDING and sim.state.build_id is not None:
                building[sim.state.build_id].append(sim.name)
        for build_id, names in building.items():
            if len(names) > 1:
                self.seen.append((build_id, names))


def builds_sent(sim: Any, cookie: str) -> int:
    return sum(1 for c in sim.history if c.method == "build" and c.args[0] == cookie)


def leave_a_build_directory(sim: Any, cookie: str) -> None:
    """The builder's daemon crashed while building ``cookie`` for some master: its build
    directory is still there (the real daemon removes it only when cleaning)."""
    chroot, dsc = sim.cache.store(b"other chroot"), sim.cache.store(b"other dsc")
    sim.state.call("build", (cookie, "binarypackage", chroot, {"x_1.dsc": dsc}, ARGS))
    sim.state.reset()


async def status_of(store: Store, build: Any) -> BuildStatus:
    return (await store.builds.get(build)).status


@pytest_twisted.ensureDeferred
async def test_a_build_lost_in_a_crash_is_not_sent_back_to_the_builder_that_lost_it(
    reactor: Any, make_world: Any, store: Store
) -> None:
    clock, config = clocked(reactor)
    world = await make_world(config, clock=clock)
    crashed, crashed_builder = await world.builder("crashed")
    crashed.faults.like_the_real_daemon()
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    assert crashed.state.build_id == build.cookie
    clock.advance(60)
    crashed.state.reset()  # the daemon restarts mid-build: IDLE, the build directory stays
    await master.scan_all()
    # the build was lost: back in the queue, counted against the builder, with the reason
    assert await status_of(store, build) is BuildStatus.NEEDSBUILD
    events = await store.events.for_build(build.id)
    lost = [e for e in events if e.kind == "lost"]
    assert lost and lost[0].builder_id == crashed_builder.id
    assert (await store.builders.get(crashed_builder)).failure_count == 1
    # ... and it is not sent back to the builder that lost it
    await master.scan_all()
    assert builds_sent(crashed, build.cookie) == 1
    assert crashed.state.state == IDLE
    # it is built elsewhere
    other, other_builder = await world.builder("other")
    await master.scan_all()
    assert other.state.build_id == build.cookie and other.state.state == BUILDING
    assert (await store.builds.get(build)).builder_id == other_builder.id
    # the builder that lost it builds other things, and stays in service
    second = await world.queue()
    await master.scan_all()
    assert crashed.state.build_id == second.cookie and crashed.state.running
    assert builds_sent(crashed, build.cookie) == 1
    assert (await store.builders.get(crashed_builder)).builderok


@pytest_twisted.ensureDeferred
async def test_a_builder_stuck_aborting_after_a_faulted_build_is_failed_with_a_reason_to_act_on(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    """build() of a build whose directory survived a crash faults and leaves the daemon
    BUILDING with nothing running; the job stays on the builder until it is known not to
    run it; aborted, the daemon sticks in ABORTING: after stuck_timeout the builder is
    failed with a reason an operator can act on, and the build goes elsewhere."""
    clock, config = clocked(reactor, stuck_timeout=300.0)
    world = await make_world(config, clock=clock)
    stuck, stuck_builder = await world.builder("stuck")
    stuck.faults.like_the_real_daemon()
    build = await world.queue()
    leave_a_build_directory(stuck, build.cookie)  # another master's crash, long ago
    master = world.harness.master
    await master.scan_all()
    assert builds_sent(stuck, build.cookie) == 1  # and it faulted
    assert stuck.state.state == ABORTING  # the master aborted what it found
    assert "abort" in [c.method for c in stuck.history]
    # the builder said BUILDING: the job stays with it until it is known not to run it
    job = await store.queue.get_for_build(build)
    assert job is not None and job.builder_id == stuck_builder.id
    clock.advance(299)
    await master.scan_all()
    assert (await store.builders.get(stuck_builder)).builderok
    clock.advance(1)
    await master.scan_all()
    failed = await store.builders.get(stuck_builder)
    reason = (
        f"stuck ABORTING {build.cookie} for 300 s: an abort that does not end (nothing left to"
        " kill, or processes that will not die); restart the builder daemon"
    )
    assert (failed.builderok, failed.failed_by_master, failed.failnotes) == (False, True, reason)
    assert f"stuck ({stuck.url}) marked as failed due to: {reason}" in captured_log.warnings()
    assert reason in [e.message for e in await store.events.for_builder(stuck_builder.id)]
    # the build waits for another builder, and is built there
    assert await status_of(store, build) is BuildStatus.NEEDSBUILD
    other, _ = await world.builder("other")
    watch = DoubleRuns(reactor, [stuck, other])
    await master.scan_all()
    watch.check()
    assert other.state.build_id == build.cookie and other.state.running
    assert watch.seen == []
    # the failed builder is re-probed and stays failed while it is stuck
    clock.advance(config.probe_initial_delay)
    await master.scan_all()
    assert not (await store.builders.get(stuck_builder)).builderok


@pytest_twisted.ensureDeferred
async def test_a_stuck_virtualized_builder_gets_its_vm_reset(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    clock, config = clocked(reactor, stuck_timeout=300.0)
    world = await make_world(config, clock=clock)
    # the farm's VM reset command makes a new machine of a simulated builder
    master = world.harness.master
    master.config = attrs.evolve(config, vm_resume_command=world.harness.farm.vm_reset_command())
    vm, vm_builder = await world.builder("vm", virtualized=True)
    vm.faults.like_the_real_daemon()
    leave_a_build_directory(vm, "PACKAGEBUILD-424242")
    # and the build again: BUILDING with nothing running
    chroot, dsc = vm.cache.store(b"other chroot"), vm.cache.store(b"other dsc")
    try:
        vm.state.call(
            "build", ("PACKAGEBUILD-424242", "binarypackage", chroot, {"x_1.dsc": dsc}, ARGS)
        )
    except Exception:
        pass
    await store.jobs.set_clean_status(vm_builder, BuilderCleanStatus.DIRTY)
    await master.scan_all()
    assert vm.state.state == ABORTING  # leftovers: aborted, and the abort sticks
    clock.advance(300)
    await master.scan_all()
    # reset instead of failed: the VM is a new machine, the builder stays in service
    assert vm.state.state == IDLE and vm.state.build_dirs == frozenset()
    assert (await store.builders.get(vm_builder)).builderok
    resets = [e.message for e in await store.events.for_builder(vm_builder.id) if e.kind == "reset"]
    assert resets == [
        "stuck ABORTING PACKAGEBUILD-424242 for 300 s: an abort that does not end (nothing left"
        " to kill, or processes that will not die); resetting its VM"
    ]
    assert any("resetting its VM" in w for w in captured_log.warnings())
    # and it builds again
    build = await world.queue(ppa=True)
    await master.scan_all()
    assert vm.state.build_id == build.cookie and vm.state.running


@pytest_twisted.ensureDeferred
async def test_a_builder_that_keeps_losing_builds_is_blamed_and_never_runs_one_twice(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """A builder that answers build() with another build id (it may be building our job
    under its own name) is charged for it, its job leaves it only once it is aborted and
    clean, and it is taken out of service after builder_disable_threshold such failures."""
    config = LOSING
    world = await make_world(config, build_time=0.5)
    liar, liar_builder = await world.builder("liar")
    liar.faults.wrong_cookie = "PACKAGEBUILD-31337"
    honest, honest_builder = await world.builder("honest")
    builds = [await world.queue() for _ in range(6)]
    watch = DoubleRuns(reactor, [liar, honest])
    watch.start()
    master = world.harness.master
    master.startService()
    try:
        await master.when_ready()

        async def all_built() -> bool:
            for b in builds:
                if await status_of(store, b) is not BuildStatus.FULLYBUILT:
                    return False
            return True

        await wait_for(reactor, all_built, 60, "every build")
    finally:
        watch.stop()
        await master.stopService()
    assert watch.seen == []
    liar_now = await store.builders.get(liar_builder)
    assert not liar_now.builderok and liar_now.failed_by_master
    assert liar_now.failnotes is not None and "PACKAGEBUILD-31337" in liar_now.failnotes
    for build in builds:
        assert (await store.builds.get(build)).builder_id == honest_builder.id
    assert (await store.builders.get(honest_builder)).builderok


@pytest_twisted.ensureDeferred
async def test_a_builder_that_keeps_forgetting_its_builds_is_taken_out_of_service(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """Every build it is given it loses (IDLE while the database says building): each loss
    counts against it, although each dispatch succeeded, until it is disabled."""
    config = LOSING
    world = await make_world(config, build_time=30)
    forgetful, forgetful_builder = await world.builder("forgetful")

    def forget() -> None:  # forgets every build it is given
        if forgetful.state.state == BUILDING:
            forgetful.faults.forget_build = True

    forgetting = task.LoopingCall(forget)
    forgetting.clock = reactor
    forgetting.start(0.01)
    builds = [await world.queue() for _ in range(5)]
    master = world.harness.master
    master.startService()
    try:
        await master.when_ready()

        async def disabled() -> bool:
            return not (await store.builders.get(forgetful_builder)).builderok

        await wait_for(reactor, disabled, 60, "the builder to be disabled")
    finally:
        forgetting.stop()
        await master.stopService()
    failed = await store.builders.get(forgetful_builder)
    assert failed.failure_count >= 3 and failed.failed_by_master
    assert failed.failnotes is not None and "lost" in failed.failnotes
    lost = [e for e in await store.events.for_builder(forgetful_builder.id) if e.kind == "lost"]
    assert len(lost) >= 3
    # each build was dispatched to it once at most: a lost build is not sent back
    started = collections.Counter(c.args[0] for c in forgetful.history if c.method == "build")
    assert set(started.values()) == {1}
    for build in builds:
        assert await status_of(store, build) is BuildStatus.NEEDSBUILD


@pytest_twisted.ensureDeferred
async def test_a_virtualized_builder_that_lost_a_build_is_reset_before_it_gets_it_back(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """A virtualized builder is known clean once its VM is reset: the build it lost may go
    back to it then, and is built there."""
    clock, config = clocked(reactor)
    world = await make_world(config, clock=clock)
    master = world.harness.master
    master.config = attrs.evolve(config, vm_resume_command=world.harness.farm.vm_reset_command())
    vm, vm_builder = await world.builder("vm", virtualized=True)
    vm.faults.like_the_real_daemon()
    build = await world.queue(ppa=True)
    await master.scan_all()
    assert vm.state.build_id == build.cookie and vm.state.running
    clock.advance(60)
    vm.state.reset()  # the daemon restarts mid-build; its build directory stays
    assert vm.state.build_dirs == {build.cookie}
    await master.scan_all()
    # lost: counted against the builder, and its VM reset (nothing else to do meanwhile)
    assert "lost" in [e.kind for e in await store.events.for_build(build.id)]
    assert (await store.builders.get(vm_builder)).failure_count == 1
    assert vm.state.build_dirs == frozenset(), "a new machine"
    assert builds_sent(vm, build.cookie) == 1
    # clean: it may build it again, and does
    await master.scan_all()
    assert builds_sent(vm, build.cookie) == 2
    assert vm.state.build_id == build.cookie and vm.state.running
    assert await status_of(store, build) is BuildStatus.BUILDING
