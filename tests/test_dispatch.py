"""The dispatch chain: every way it can fail leaves a consistent state."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from buildmaster.config import MasterConfig
from buildmaster.enums import BuilderCleanStatus, BuildQueueStatus, BuildStatus
from buildmaster.store import Store
from buildmaster.testing import wait_for


def config(**kw: Any) -> MasterConfig:
    base: dict[str, Any] = dict(
        socket_timeout=5.0, virtualized_socket_timeout=5.0, scan_interval=3600
    )
    base.update(kw)
    return MasterConfig(**base)


async def waiting_again(store: Store, build: Any) -> bool:
    job = await store.queue.get_for_build(build)
    return (
        (await store.builds.get(build)).status is BuildStatus.NEEDSBUILD
        and job is not None
        and job.status is BuildQueueStatus.WAITING
        and job.builder_id is None
        and job.buildstart is None
    )


@pytest_twisted.ensureDeferred
async def test_a_failing_vm_reset_is_a_builder_failure(
    make_world: Any, store: Store, tmp_path: Path
) -> None:
    script = tmp_path / "reset"
    script.write_text("#!/bin/sh\necho cannot reach $1 >&2\nexit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    world = await make_world(config(vm_resume_command=f"{script} %(vm_host)s"))
    sim, builder = await world.builder("ppa-builder", virtualized=True)
    build = await world.queue(ppa=True)
    await world.harness.master.scan_all()
    assert await waiting_again(store, build)  # back in the queue, nothing half-done
    assert "build" not in [c.method for c in sim.history]
    events = [e.message for e in await store.events.for_build(build.id) if e.kind == "failure"]
    assert events and events[0].startswith(
        "VM reset command exited with 3: cannot reach ppa-builder.vm"
    )
    assert (await store.builders.get(builder)).failure_count == 1


@pytest_twisted.ensureDeferred
async def test_a_vm_reset_that_hangs_is_cut_short(make_world: Any, store: Store) -> None:
    world = await make_world(
        config(vm_resume_command="sh -c 'sleep 30' %(vm_host)s", vm_resume_timeout=0.3)
    )
    sim, _ = await world.builder("slow-vm", virtualized=True)
    build = await world.queue(ppa=True)
    await world.harness.master.scan_all()
    assert await waiting_again(store, build)
    events = [e.message for e in await store.events.for_build(build.id) if e.kind == "failure"]
    assert events and events[0].startswith("VM reset command timed out after 0.3 seconds")


@pytest_twisted.ensureDeferred
async def test_no_connection_from_before_a_vm_reset_is_used_after_it(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """A reset VM is a new machine: connections kept alive to the old one lead nowhere (at
    best to a reset, at worst to silence until a call's deadline), so the master drops them
    and talks to the reset builder over new ones."""
    world = await make_world(config(vm_resume_command="true %(vm_host)s"))
    sim, _ = await world.builder("ppa-vm", virtualized=True)
    master = world.harness.master
    await master.scan_all()  # first contact: the idle builder's VM is reset (it was dirty)
    await master.scan_all()  # a status poll; its connection is kept alive
    before = sim.connections
    assert before
    build = await world.queue(ppa=True)
    await master.scan_all()  # VM reset, then ensurepresent and build
    assert sim.state.build_id == build.cookie
    await wait_for(reactor, lambda: before.isdisjoint(sim.connections), 60, "old ones closed")
    assert sim.connections  # the dispatch's own connections, kept alive in turn


@pytest_twisted.ensureDeferred
async def test_private_files_reach_the_builder_with_a_token(make_world: Any, store: Store) -> None:
    world = await make_world(config(vm_resume_command="true %(vm_host)s"))
    sim, _ = await world.builder("private", virtualized=True)
    await store.archives.set_private(world.data.cprov_ppa, True)
    secret_dsc = await world.harness.add_file(
        "secret_1.0.dsc", b"Source: secret\n", "text/plain", restricted=True
    )
    # without the token the librarian refuses the file
    from buildmaster.httpclient import HTTPClient

    http = HTTPClient(world.harness.reactor)
    try:
        anonymous = await http.request(b"GET", world.harness.librarian.url_for(secret_dsc))
    finally:
        http.close_idle()
    assert anonymous.status == 401
    build = await world.queue("secret", ppa=True)
    ctx = await store.jobs.context(build.id)
    await store.sources.replace_file(
        build.sourcepackagerelease_id, ctx.files[0].file.id, secret_dsc.id
    )
    await world.harness.master.scan_all()
    assert sim.state.build_id == build.cookie
    assert sim.cache.has(secret_dsc.sha1)
    ensure = [
        c.args for c in sim.history if c.method == "ensurepresent" and c.args[0] == secret_dsc.sha1
    ]
    assert ensure[0][2] == "buildd" and ensure[0][3]  # user and token sent
    assert world.harness.librarian.check_token(secret_dsc.id, ensure[0][3])
    args = [c.args[4] for c in sim.history if c.method == "build"][0]
    assert args["archive_private"] is True
    # the private PPA's line carries its password for builders; the primary's lines do not
    secret = (await store.archives.get(world.data.cprov_ppa)).buildd_secret
    assert secret
    assert args["archives"][0] == (
        f"deb https://buildd:{secret}@private-ppa.launchpadcontent.net/cprov/ppa/ubuntu hoary main"
    )
    assert all(secret not in line for line in args["archives"][1:])


@pytest_twisted.ensureDeferred
async def test_no_chroot_means_no_dispatch_and_the_reason_is_recorded(
    make_world: Any, store: Store
) -> None:
    world = await make_world(config())
    sim, builder = await world.builder("ready")
    amd64_build = await world.queue()
    await store.db.execute(
        "UPDATE build SET distroarchseries = %s WHERE id = %s",
        (world.data.hoary_amd64.id, amd64_build.id),
    )
    await store.db.execute(
        "UPDATE build SET processor = %s WHERE id = %s",
        (world.data.processor_386.id, amd64_build.id),
    )
    await world.harness.master.scan_all()
    job = await store.queue.get_for_build(amd64_build)
    assert job is not None and job.status is BuildQueueStatus.SUSPENDED and job.builder_id is None
    [event] = [e for e in await store.events.for_build(amd64_build.id) if e.kind == "suspended"]
    assert event.message == "not dispatched: no chroot for ubuntu/hoary/amd64"
    assert "build" not in [c.method for c in sim.history]
    assert (await store.builders.get(builder)).failure_count == 0  # nobody's fault
    # the chroot arrives: the job is back in the queue and dispatched at once
    chroot = await world.harness.add_file("chroot-amd64.tar.gz", b"amd64 chroot")
    await world.harness.master.addOrUpdateChroot(world.data.hoary_amd64, chroot.id)
    assert (await store.queue.get_for_build(amd64_build)).status is BuildQueueStatus.WAITING  # type: ignore[union-attr]
    await world.harness.master.scan_all()
    assert sim.state.build_id == amd64_build.cookie


@pytest_twisted.ensureDeferred
async def test_a_builder_answering_with_another_build_id_is_a_failure(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """It may be building our job under its own name: the job leaves it only once it is
    aborted and clean, never while it may still run it."""
    world = await make_world(config())
    sim, builder = await world.builder("liar")
    sim.faults.wrong_cookie = "PACKAGEBUILD-31337"
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    events = [e.message for e in await store.events.for_build(build.id) if e.kind == "failure"]
    assert "build() answered for 'PACKAGEBUILD-31337'" in events[0]
    assert (await store.builders.get(builder)).failure_count == 1
    assert (await store.builders.get(builder)).clean_status is not BuilderCleanStatus.CLEAN
    # it was building our job after all: aborted, and the job stays until it is clean
    assert sim.state.build_id == build.cookie and sim.state.state == "BuilderStatus.ABORTING"
    job = await store.queue.get_for_build(build)
    assert job is not None and job.builder_id == builder.id
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the abort")
    await master.scan_all()
    assert await waiting_again(store, build)
    assert [c.method for c in sim.history][-2:] == ["status", "clean"]


@pytest_twisted.ensureDeferred
async def test_the_wrong_protocol_version_fails_the_probe(make_world: Any, store: Store) -> None:
    world = await make_world(config())
    sim, builder = await world.builder("ancient")
    sim.faults.protocol_version = "0.9"
    await world.harness.master.setupBuilders(world.data.hoary_i386)
    builder = await store.builders.get(builder)
    assert (builder.builderok, builder.failnotes) == (
        False,
        "protocol version '0.9', expected '1.0'",
    )


@pytest_twisted.ensureDeferred
async def test_a_job_that_breaks_every_builder_fails_without_taking_them_down(
    reactor: Any, make_world: Any, store: Store
) -> None:
    from slavesim import Outcome, OutcomeRule

    world = await make_world(config(), build_time=0.1)
    sims = [(await world.builder(f"b{i}"))[0] for i in range(3)]
    # every builder gives up on it (BUILDERFAIL), and builds everything else
    world.harness.farm.rules = [OutcomeRule(Outcome.BUILDERFAIL, package="poison")]
    poison = await world.queue("poison")
    await store.db.execute(
        "UPDATE buildqueue SET lastscore = 100000 WHERE build = %s", (poison.id,)
    )
    master = world.harness.master
    for _ in range(3):
        await master.scan_all()  # dispatched
        await wait_for(
            reactor,
            lambda: any(s.state.state == "BuilderStatus.WAITING" for s in sims),
            60,
            "the poison to break its builder",
        )
        await master.scan_all()  # collected: BUILDERFAIL
    poison = await store.builds.get(poison)
    assert poison.status is BuildStatus.FAILEDTOBUILD
    assert poison.failure_reason is not None and "BUILDERFAIL" in poison.failure_reason
    # it was tried on three different builders, and none of them paid for it
    tried = {e.builder_id for e in await store.events.for_build(poison.id) if e.kind == "failure"}
    assert len(tried) == 3
    for builder in await store.builders.all():
        assert builder.builderok
    # a good job goes through
    good = await world.queue("good")
    await master.scan_all()
    assert good.cookie in [sim.state.build_id for sim in sims]


@pytest_twisted.ensureDeferred
async def test_a_lost_answer_to_build_is_checked_before_the_job_goes_elsewhere(
    reactor: Any, make_world: Any, store: Store, clock: Any
) -> None:
    """The builder starts the build but its answer never arrives in time: the master asks the
    builder before judging, finds it building the job, and records the dispatch (sending the
    job elsewhere would have it built twice)."""
    world = await make_world(config(), master_clock=clock)
    sim, builder = await world.builder("slow-answer")
    sim.faults.withhold_answer = {"build": 3600.0}
    build = await world.queue()
    scan = world.harness.master.scan_all()
    await wait_for(reactor, lambda: "build" in [c.method for c in sim.history], 60, "build()")
    clock.advance(config().socket_timeout)  # the deadline of build(), on the master's clock
    await scan
    assert [c.args[0] for c in sim.history if c.method == "build"] == [build.cookie]
    assert (await store.builds.get(build)).status is BuildStatus.BUILDING
    job = await store.queue.get_for_build(build)
    assert job is not None and job.builder_id == builder.id
    refreshed = await store.builders.get(builder)
    assert (refreshed.builderok, refreshed.failure_count) == (True, 0)
    await world.harness.master.scan_all()  # the next scan watches it as usual
    assert [c.method for c in sim.history].count("build") == 1
    assert (await store.builds.get(build)).status is BuildStatus.BUILDING


@pytest.mark.parametrize("acted", [False, True], ids=["dropped-unread", "acted-then-dropped"])
@pytest.mark.parametrize("method", ["build", "clean", "abort"])
@pytest_twisted.ensureDeferred
async def test_a_call_on_a_kept_alive_connection_the_builder_dropped_runs_exactly_once(
    reactor: Any, make_world: Any, store: Store, method: str, acted: bool
) -> None:
    """``build``, ``clean`` and ``abort`` go over kept-alive connections. When the builder has
    dropped the connection as the call went out (``acted=False``: it never saw the call) or
    dropped it after carrying the call out (``acted=True``), the master asks the builder's
    status and sends the call again only if it did not take effect: the builder carries it
    out exactly once, nothing counts as a failure, and the build goes on."""
    world = await make_world(config(), build_time=0.3 if method == "clean" else 3600)
    world.harness.farm.settings.abort_time = 0.1
    sim, builder = await world.builder("dropper")
    master = world.harness.master
    await master.scan_all()  # a status poll: the connection is kept alive
    sim.faults.stale_connection = {method: 1}
    sim.faults.stale_after_acting = acted
    build = await world.queue()
    await master.scan_all()
    assert sim.state.build_id == build.cookie
    if method == "abort":
        assert await master.cancel(build) is BuildStatus.CANCELLING
        await master.scan_all()  # sends abort()
    if method != "build":
        await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60)
        await master.scan_all()  # collects, then clean()
    assert sim.faults.stale_connection == {method: 0}, "the fault was not met"
    assert [c.method for c in sim.history].count(method) == 1
    refreshed = await store.builders.get(builder)
    assert (refreshed.builderok, refreshed.failure_count) == (True, 0)
    expected = {
        "build": BuildStatus.BUILDING,
        "clean": BuildStatus.FULLYBUILT,
        "abort": BuildStatus.CANCELLED,
    }[method]
    assert (await store.builds.get(build)).status is expected
    if method != "build":
        assert sim.state.state == "BuilderStatus.IDLE"  # cleaned
