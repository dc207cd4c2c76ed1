"""After dispatch: watching builds, collecting results, final states, cleaning, operations."""

from __future__ import annotations

import datetime
import gzip
import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol

from buildmaster.builderclient import BuilderClient
from buildmaster.config import MasterConfig
from buildmaster.enums import BuilderCleanStatus, BuildQueueStatus, BuildStatus
from buildmaster.model import Build
from buildmaster.policy import FailurePolicy
from buildmaster.protocol import BuilderError
from buildmaster.scan.collect import CollectLimits, ResultCollector, store_results
from buildmaster.store import NotFound, Store
from buildmaster.testing import wait_for
from buildmaster.transitions import IllegalTransition

FAST = MasterConfig(
    socket_timeout=5.0,
    virtualized_socket_timeout=5.0,
    scan_interval=3600,
    vm_resume_command="true %(vm_host)s",
)


async def state(store: Store, build: Build) -> BuildStatus:
    return (await store.builds.get(build)).status


async def run_until_waiting(reactor: Any, world: Any, sim: Any) -> None:
    await world.harness.master.scan_all()
    await wait_for(
        reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the build to end"
    )


@pytest_twisted.ensureDeferred
async def test_a_successful_build_is_collected_into_the_librarian(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST, build_time=0.5)
    sim, builder = await world.builder("builder")
    build = await world.queue("hello")
    master = world.harness.master
    await master.scan_all()
    assert await state(store, build) is BuildStatus.BUILDING
    # while it builds, the log tail is kept (in batches)
    await wait_for(
        reactor, lambda: sim.state.state == "BuilderStatus.BUILDING" and sim.state.log_path, 60
    )
    await master.scan_all()
    assert len(master.logtails) == 1
    await master.logtails.flush()
    job = await store.queue.get_for_build(build)
    assert job is not None and job.logtail
    waiting_filemap = None
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60)
    waiting_filemap = sim.state.status()["filemap"]
    log_path = sim.state.log_path()
    assert log_path is not None
    builder_log = Path(log_path).read_bytes()
    await master.scan_all()

    build = await store.builds.get(build)
    assert build.status is BuildStatus.FULLYBUILT
    assert (
        build.date_finished is not None
        and build.duration is not None
        and build.duration.total_seconds() >= 0
    )
    assert await store.queue.get_for_build(build) is None  # the job left the queue
    files = {f.filename: f.file for f in await store.builds.files(build)}
    assert set(files) == set(waiting_filemap) and any(n.endswith(".changes") for n in files)
    for name, file in files.items():
        assert file.expires is None  # linked to its build: permanent
        content = await world.harness.librarian.read_bytes(file.id)
        assert hashlib.sha1(content).hexdigest() == waiting_filemap[name] == file.sha1
    assert build.log_id is not None
    log = await world.harness.librarian.get(build.log_id)
    assert log.filename == "buildlog_ubuntu-hoary-i386.hello_1.0_FULLYBUILT.txt.gz"
    # the builder gives no checksum for its log: what is recorded is the hash of what was
    # stored (the compressed log), checked again when it is read back
    stored = await world.harness.librarian.read_bytes(build.log_id)
    assert log.sha1 == hashlib.sha1(stored).hexdigest() and log.filesize == len(stored)
    text = gzip.decompress(stored)
    assert text == builder_log and b"hello" in text and len(text) > 100
    # the builder was cleaned and is clean again
    assert sim.state.state == "BuilderStatus.IDLE"
    assert (await store.builders.get(builder)).clean_status is BuilderCleanStatus.CLEAN


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("PACKAGEFAIL", BuildStatus.FAILEDTOBUILD),
        ("DEPFAIL", BuildStatus.MANUALDEPWAIT),
        ("CHROOTFAIL", BuildStatus.CHROOTWAIT),
        ("GIVENBACK", BuildStatus.NEEDSBUILD),
    ],
)
@pytest_twisted.ensureDeferred
async def test_results_map_to_final_states(
    reactor: Any, make_world: Any, store: Store, outcome: str, expected: BuildStatus
) -> None:
    from slavesim import Outcome, OutcomeRule

    world = await make_world(FAST, build_time=0.2)
    sim, _ = await world.builder("builder")
    dependencies = "libfoo (>= 1.0)" if outcome == "DEPFAIL" else None
    sim.rules = [OutcomeRule(Outcome[outcome], package="pkg*", dependencies=dependencies)]
    build = await world.queue("pkg")
    await run_until_waiting(reactor, world, sim)
    sim.rules = []  # a build that is given back builds fine next time
    await world.harness.master.scan_all()
    build = await store.builds.get(build)
    if expected is BuildStatus.NEEDSBUILD:
        # given back: queued again, and (in the same scan) dispatched again
        assert build.status is BuildStatus.BUILDING
        assert "given-back" in [e.kind for e in await store.events.for_build(build.id)]
        return
    assert build.status is expected
    assert build.log_id is not None and build.date_finished is not None
    assert await store.builds.files(build) == []
    assert build.dependencies == ("libfoo (>= 1.0)" if outcome == "DEPFAIL" else None)
    assert sim.state.state != "BuilderStatus.WAITING"  # cleaned


@pytest_twisted.ensureDeferred
async def test_builderfail_blames_the_builder_and_requeues_the_job(
    reactor: Any, make_world: Any, store: Store
) -> None:
    from slavesim import Outcome, OutcomeRule

    world = await make_world(FAST, build_time=0.2)
    sim, builder = await world.builder("flaky")
    sim.rules = [OutcomeRule(Outcome.BUILDERFAIL)]
    build = await world.queue()
    await run_until_waiting(reactor, world, sim)
    await world.harness.master.scan_all()
    assert await state(store, build) is BuildStatus.NEEDSBUILD
    job = await store.queue.get_for_build(build)
    assert job is not None and job.status is BuildQueueStatus.WAITING and job.builder_id is None
    assert (await store.builders.get(builder)).failure_count == 1
    assert (await store.builds.get(build)).failure_count == 1
    failures = [e.message for e in await store.events.for_build(build.id) if e.kind == "failure"]
    assert failures and "BUILDERFAIL" in failures[0]


@pytest_twisted.ensureDeferred
async def test_a_builder_that_keeps_failing_is_disabled_and_comes_back_by_itself(
    reactor: Any, make_world: Any, store: Store, captured_log: Any, clock: Any
) -> None:
    config = MasterConfig(
        socket_timeout=5.0,
        scan_interval=3600,
        probe_initial_delay=0.1,
        probe_max_delay=0.2,
        failure_policy=FailurePolicy(tolerated_scan_failures=0, builder_disable_threshold=2),
    )
    world = await make_world(config, master_clock=clock)
    sim, builder = await world.builder("unsteady")
    sim.faults.refuse = True
    await sim.settled()
    master = world.harness.master
    await master.scan_all()
    await master.scan_all()
    builder = await store.builders.get(builder)
    assert (builder.builderok, builder.failed_by_master) == (False, True)
    # while it is down, re-probes fail and it stays out
    clock.advance(2 * config.probe_max_delay)  # the re-probe is due
    await master.scan_all()
    assert not (await store.builders.get(builder)).builderok
    # it answers again: the next probe brings it back
    sim.faults.refuse = False
    await sim.settled()
    clock.advance(2 * config.probe_max_delay)  # the re-probe is due
    await master.scan_all()
    builder = await store.builders.get(builder)
    assert builder.builderok and builder.failnotes is None and builder.failure_count == 0
    assert "restored" in [e.kind for e in await store.events.for_builder(builder.id)]

    # a builder an operator took out of service stays out
    await store.builders.set_builderok(builder, False, "broken disk (operator)")
    await master.scan_all()
    await master.scan_all()
    assert (await store.builders.get(builder)).failnotes == "broken disk (operator)"


@pytest_twisted.ensureDeferred
async def test_a_builder_reporting_another_cookie_lost_the_job(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST, build_time=3600)
    sim, builder = await world.builder("confused")
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    assert await state(store, build) is BuildStatus.BUILDING
    sim.faults.wrong_cookie = "PACKAGEBUILD-999"
    await master.scan_all()
    # the builder was told to abort, is dirty, and pays for it; our job stays with it until
    # it is known not to run it (it may be building it under another name)
    assert "abort" in [c.method for c in sim.history]
    assert (await store.builders.get(builder)).clean_status is BuilderCleanStatus.DIRTY
    assert (await store.builders.get(builder)).failure_count == 1
    assert await state(store, build) is BuildStatus.BUILDING
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the abort")
    await master.scan_all()
    assert await state(store, build) is BuildStatus.NEEDSBUILD
    assert "lost" in [e.kind for e in await store.events.for_build(build.id)]
    assert sim.state.state == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_a_builder_that_forgets_its_build_loses_the_job(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST, build_time=3600)
    sim, builder = await world.builder("forgetful")
    other = await world.queue()
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    first = other if sim.state.build_id == other.cookie else build
    sim.faults.forget_build = True
    await master.scan_all()
    # requeued, and since the builder is idle it takes the best job at once
    assert (await store.builds.get(first)).failure_count == 0
    assert "lost" in [e.kind for e in await store.events.for_build(first.id)]
    assert sim.state.state == "BuilderStatus.BUILDING"


@pytest_twisted.ensureDeferred
async def test_isolation_failure(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    world = await make_world(FAST, build_time=3600)
    sim, builder = await world.builder("rogue")
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    # the database forgets the job behind the master's back and thinks the builder clean
    await store.db.execute("DELETE FROM buildqueue WHERE build = %s", (build.id,))
    await store.db.execute("UPDATE builder SET clean_status = 0 WHERE id = %s", (builder.id,))
    await master.scan_all()
    builder = await store.builders.get(builder)
    assert builder.builderok is False
    assert builder.failnotes is not None and builder.failnotes.startswith("isolation failure")


@pytest_twisted.ensureDeferred
async def test_cancel_a_waiting_build(reactor: Any, make_world: Any, store: Store) -> None:
    world = await make_world(FAST)
    build = await world.queue()
    assert await world.harness.master.cancel(build) is BuildStatus.CANCELLED
    assert await state(store, build) is BuildStatus.CANCELLED
    assert await store.queue.get_for_build(build) is None
    with pytest.raises(IllegalTransition):
        await world.harness.master.cancel(
            build
        )  # already ended: CANCELLED -> CANCELLED is no change


@pytest_twisted.ensureDeferred
async def test_cancel_a_running_build(reactor: Any, make_world: Any, store: Store) -> None:
    world = await make_world(FAST, build_time=3600)
    world.harness.farm.settings.abort_time = 0.2
    sim, _ = await world.builder("busy")
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    assert await master.cancel(build) is BuildStatus.CANCELLING
    await wait_for(reactor, lambda: "abort" in [c.method for c in sim.history], 60, "abort()")
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60)
    await master.scan_all()
    build = await store.builds.get(build)
    assert build.status is BuildStatus.CANCELLED and build.log_id is not None
    assert sim.state.state == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_a_build_that_does_not_abort_in_time_fails_its_builder(
    reactor: Any, make_world: Any, store: Store, captured_log: Any, clock: Any
) -> None:
    config = MasterConfig(socket_timeout=5.0, scan_interval=3600, cancel_timeout=0.3)
    world = await make_world(config, build_time=3600, master_clock=clock)
    world.harness.farm.settings.abort_time = 3600
    sim, builder = await world.builder("stubborn")
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    await master.cancel(build)
    await master.scan_all()
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.ABORTING", 60)
    await master.scan_all()
    assert await state(store, build) is BuildStatus.CANCELLING  # not yet
    clock.advance(0.5)  # past the cancel's deadline (0.3 s), on the master's clock
    await master.scan_all()
    assert await state(store, build) is BuildStatus.CANCELLED
    builder = await store.builders.get(builder)
    assert builder.builderok is False and "did not abort within 0.3 seconds" in (
        builder.failnotes or ""
    )


@pytest_twisted.ensureDeferred
async def test_retry_and_rescore(reactor: Any, make_world: Any, store: Store) -> None:
    from slavesim import Outcome, OutcomeRule

    world = await make_world(FAST, build_time=0.2)
    sim, _ = await world.builder("builder")
    sim.rules = [OutcomeRule(Outcome.PACKAGEFAIL)]
    build = await world.queue()
    await run_until_waiting(reactor, world, sim)
    await world.harness.master.scan_all()
    assert await state(store, build) is BuildStatus.FAILEDTOBUILD
    job = await world.harness.master.retry(build)
    assert await state(store, build) is BuildStatus.NEEDSBUILD
    assert job.lastscore == 1500 + 1000 + 5 and not job.manual
    job = await world.harness.master.rescore(build, 99999)
    assert (job.lastscore, job.manual) == (99999, True)
    with pytest.raises(IllegalTransition):
        await world.harness.master.retry(build)  # NEEDSBUILD is not retryable
    with pytest.raises(NotFound):
        await world.harness.master.rescore(10**6, 1)


@pytest_twisted.ensureDeferred
async def test_manual_mode_builders_are_collected_but_get_no_new_job(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world = await make_world(FAST, build_time=0.2)
    sim, builder = await world.builder("manual")
    first = await world.queue()
    await world.harness.master.scan_all()
    assert sim.state.build_id == first.cookie
    await world.harness.master.set_manual(builder, True)
    second = await world.queue()
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60)
    await world.harness.master.scan_all()
    assert await state(store, first) is BuildStatus.FULLYBUILT
    assert await state(store, second) is BuildStatus.NEEDSBUILD
    assert sim.state.state == "BuilderStatus.IDLE"


@pytest_twisted.ensureDeferred
async def test_collecting_twice_gives_the_same_result_and_one_copy_of_each_file(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """A master that dies after storing the results but before recording the end: the next
    collection ends the same way, with one permanent copy of each file."""
    world = await make_world(FAST, build_time=0.2)
    sim, builder = await world.builder("builder")
    build = await world.queue()
    job = await store.queue.get_for_build(build)
    assert job is not None
    await run_until_waiting(reactor, world, sim)
    status = sim.state.status()
    worker = world.harness.master.workers[builder.id]
    # collect, but stop before recording the end (as a master killed there would)
    snap = await store.jobs.snapshot(builder)
    jobs = store.jobs
    real_finish = jobs.finish

    async def killed(*args: Any, **kw: Any) -> bool:
        raise SystemExit("the master died here")

    jobs.finish = killed  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            await store_results(
                worker.scope, snap, await worker.client.status(), BuildStatus.FULLYBUILT
            )
    finally:
        jobs.finish = real_finish  # type: ignore[method-assign]
    contents_before = (await store.db.query("SELECT count(*) FROM libraryfilecontent"))[0][0]
    assert await state(store, build) is BuildStatus.BUILDING
    assert sim.state.state == "BuilderStatus.WAITING"

    # the restarted master scans: the builder still says WAITING
    await world.harness.master.scan_all()
    build = await store.builds.get(build)
    assert build.status is BuildStatus.FULLYBUILT
    files = await store.builds.files(build)
    assert sorted(f.filename for f in files) == sorted(status["filemap"])
    # the bytes are stored once; what the dead master had stored is provisional and expires
    assert (await store.db.query("SELECT count(*) FROM libraryfilecontent"))[0][
        0
    ] == contents_before
    permanent = await store.db.query(
        "SELECT filename, count(*) FROM libraryfilealias WHERE expires IS NULL"
        " AND id NOT IN (SELECT libraryfile FROM sourcepackagereleasefile)"
        " AND id NOT IN (SELECT chroot FROM distroarchseries WHERE chroot IS NOT NULL) GROUP BY 1"
    )
    assert build.log_id is not None
    log_name = (await world.harness.librarian.get(build.log_id)).filename
    assert dict(permanent) == {**{name: 1 for name in status["filemap"]}, log_name: 1}
    assert sim.state.state == "BuilderStatus.IDLE"


async def _job_builder(store: Store, build: Build) -> int | None:
    job = await store.queue.get_for_build(build)
    return None if job is None else job.builder_id


async def first_done_second_waiting(
    reactor: Any, make_world: Any, config: MasterConfig, master_clock: Any = None
) -> tuple[Any, Any, Any, Build, Build]:
    """One builder, two jobs: the first has finished on the builder (WAITING), the second
    waits in the queue. Returns the world, the simulated builder, its row and both builds."""
    world = await make_world(config, build_time=0.2, master_clock=master_clock)
    sim, builder = await world.builder("builder")
    first, second = await world.queue(), await world.queue()
    await run_until_waiting(reactor, world, sim)
    return world, sim, builder, first, second


@pytest_twisted.ensureDeferred
async def test_the_next_job_is_claimed_while_the_builder_is_cleaned(
    reactor: Any, make_world: Any, store: Store, clock: Any
) -> None:
    """The builder's next job is claimed in the database while clean() is on its way, not
    after its answer: here the answer to clean() is held back (on the builder's clock)
    until the claim is there; the job is dispatched once the builder is IDLE."""
    config = MasterConfig(socket_timeout=30.0, scan_interval=3600)
    world = await make_world(config, build_time=0.2, farm_clock=clock)
    sim, builder = await world.builder("builder")
    first, second = await world.queue(), await world.queue()
    master = world.harness.master
    await master.scan_all()
    for _ in range(5):  # the build's 0.2 s
        clock.advance(0.05)
    await wait_for(reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the end")
    sim.faults.withhold_answer = {"clean": 1.0}
    scan = master.scan_all()
    await wait_for(reactor, lambda: "clean" in [c.method for c in sim.history], 60, "clean()")

    async def claimed() -> bool:
        return await _job_builder(store, second) == builder.id

    await wait_for(reactor, claimed, 60, "the next job claimed")
    assert not scan.called and sim.state.build_id != second.cookie  # clean() unanswered
    clock.advance(1.0)  # the answer to clean()
    await scan
    assert await state(store, first) is BuildStatus.FULLYBUILT
    assert await state(store, second) is BuildStatus.BUILDING
    assert [c.args[0] for c in sim.history if c.method == "build"] == [first.cookie, second.cookie]


@pytest_twisted.ensureDeferred
async def test_a_job_claimed_for_a_builder_that_cannot_be_cleaned_goes_back_unblamed(
    reactor: Any, make_world: Any, store: Store, clock: Any
) -> None:
    world, sim, builder, first, second = await first_done_second_waiting(
        reactor, make_world, FAST, master_clock=clock
    )
    sim.faults.withhold_answer = {"clean": 3600.0}
    scan = world.harness.master.scan_all()
    await wait_for(reactor, lambda: "clean" in [c.method for c in sim.history], 60, "clean()")
    clock.advance(FAST.socket_timeout)  # the deadline of clean(), on the master's clock
    await scan
    assert await state(store, first) is BuildStatus.FULLYBUILT
    # the next job was claimed for the builder meanwhile; it waits again, without a failure
    assert await state(store, second) is BuildStatus.NEEDSBUILD
    job = await store.queue.get_for_build(second)
    assert job is not None and job.status is BuildQueueStatus.WAITING and job.builder_id is None
    assert (await store.builds.get(second)).failure_count == 0
    released = [e.message for e in await store.events.for_build(second.id) if e.kind == "released"]
    assert released == ["the builder could not be cleaned"]
    # the failure is the builder's: counted against it, with its reason
    assert (await store.builders.get(builder)).failure_count == 1
    failures = [
        e.message for e in await store.events.for_builder(builder.id) if e.kind == "failure"
    ]
    assert len(failures) == 1 and "clean()" in failures[0]
    assert [c.args[0] for c in sim.history if c.method == "build"] == [first.cookie]


class _DyingBuilder(protocol.Protocol):
    """A builder that sends half of its log, then goes away: with a Content-Length that
    promised more, or with none at all (then only the closed connection ends the body)."""

    def __init__(self, with_length: bool) -> None:
        self.with_length = with_length

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        log = b"a build log line\n" * 1000
        length = f"Content-Length: {len(log)}\r\n".encode() if self.with_length else b""
        transport: Any = self.transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + length)
        transport.write(b"\r\n" + log[: len(log) // 2])
        transport.loseConnection()


@pytest.mark.parametrize("with_length", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_log_cut_short_is_not_stored(
    reactor: Any, make_world: Any, store: Store, with_length: bool
) -> None:
    """Half a log is not a log: whether the builder declared its length or not, a log whose
    transfer broke off is refused and nothing is stored (the collection is tried again)."""
    world = await make_world(FAST)
    factory = protocol.Factory.forProtocol(lambda: _DyingBuilder(with_length))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = BuilderClient(
            world.harness.master.http, f"http://127.0.0.1:{port.getHost().port}/", 5.0
        )
        collector = ResultCollector(
            world.harness.librarian,
            client,
            CollectLimits(),
            datetime.datetime.now(datetime.UTC),
        )
        with pytest.raises(BuilderError, match="cut short|partial response"):
            await collector.store_log("buildlog_cut.txt.gz", restricted=False)
    finally:
        await port.stopListening()
        world.harness.master.http.close_idle()
    rows = await store.db.query(
        "SELECT count(*) FROM libraryfilealias WHERE filename = 'buildlog_cut.txt.gz'"
    )
    assert rows == [(0,)]
