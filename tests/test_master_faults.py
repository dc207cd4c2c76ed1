"""The master's own failures blame nobody: its librarian (a file's bytes missing, results it
cannot store), its database, its VM reset command. No build fails for them, no builder is
taken out of service; the jobs they hold up wait (suspended, with the reason) and come back
when the wait is over; the operator sees one report per cause.

Real PostgreSQL, the real librarian over HTTP, slavesim builders over real sockets.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import LogLevel

from buildmaster.config import MasterConfig
from buildmaster.enums import (
    BuildQueueStatus,
    BuildStatus,
)
from buildmaster.librarian import CorruptFile
from buildmaster.masterfaults import (
    DATABASE,
    FILE_DESCRIPTORS,
    LIBRARIAN,
    VM_RESET_COMMAND,
    FaultLog,
    MasterFault,
    classify,
    shortage,
)
from buildmaster.store import Store
from buildmaster.testing import master_process, wait_for

BUILDING = "BuilderStatus.BUILDING"
WAITING = "BuilderStatus.WAITING"


def config(**kw: Any) -> MasterConfig:
    base: dict[str, Any] = dict(
        socket_timeout=5.0, virtualized_socket_timeout=5.0, scan_interval=3600.0
    )
    base.update(kw)
    return MasterConfig(**base)


def errors(captured_log: Any) -> list[str]:
    return list(captured_log.messages(LogLevel.error))


async def nobody_blamed(store: Store) -> None:
    for builder in await store.builders.all():
        assert (builder.builderok, builder.failure_count) == (True, 0), builder
    failures = await store.db.query("SELECT message FROM event WHERE kind = 'failure'")
    assert failures == []
    failed = await store.db.query(
        "SELECT count(*) FROM build WHERE buildstate IN (2, 7)"  # FAILEDTOBUILD, FAILEDTOUPLOAD
    )
    assert failed[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_a_chroot_whose_bytes_are_missing_fails_no_build_and_no_builder(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    captured_log.allow_errors(CorruptFile)  # the librarian reports the damage: once
    clock = task.Clock()
    clock.advance(reactor.seconds())
    world = await make_world(config(), clock=clock)
    sims = [(await world.builder(f"b{i}"))[0] for i in range(3)]
    builds = [await world.queue() for _ in range(10)]
    chroot = (await store.jobs.context(builds[0].id)).chroot
    assert chroot is not None
    path = world.harness.librarian.store.path_for(chroot.sha256)
    content = path.read_bytes()
    path.unlink()  # the librarian lost the chroot's bytes
    master = world.harness.master
    for _ in range(4):
        await master.scan_all()
    await nobody_blamed(store)
    # every build waits, suspended with the reason, visible in the database
    rows = await store.db.query(
        "SELECT q.status, q.suspended_reason, q.resume_after FROM buildqueue q"
        " WHERE q.build = ANY(%s)",
        ([b.id for b in builds],),
    )
    assert len(rows) == 10
    assert {r[0] for r in rows} == {int(BuildQueueStatus.SUSPENDED)}
    assert all(
        "chroot-hoary-i386.tar.gz" in r[1] and "its bytes are missing" in r[1] and r[2]
        for r in rows
    )
    # only the first dispatches asked builders to fetch it; the others were told by the
    # librarian, on the master's side
    fetches = [c for sim in sims for c in sim.history if c.method == "ensurepresent"]
    assert len([c for c in fetches if c.args[0] == chroot.sha1]) <= 3
    assert not any(c.method == "build" for sim in sims for c in sim.history)
    # one error for the operator, naming the cause
    assert len(errors(captured_log)) == 1
    assert "chroot-hoary-i386.tar.gz" in errors(captured_log)[0]
    assert "missing" in errors(captured_log)[0]
    warnings = [w for w in captured_log.warnings() if "chroot-hoary-i386.tar.gz" in w]
    assert len(warnings) == 1 and "no builder or build is blamed" in warnings[0]

    # the bytes are back: once their wait is over the builds are dispatched again
    path.write_bytes(content)
    clock.advance(master.config.fault_retry_max)
    assert await master.resume_waiting() == 10
    await master.scan_all()
    assert all(sim.state.state == BUILDING for sim in sims)
    assert len({sim.state.build_id for sim in sims} & {b.cookie for b in builds}) == 3
    await nobody_blamed(store)
    assert len(errors(captured_log)) == 1


@pytest_twisted.ensureDeferred
async def test_results_the_librarian_cannot_store_wait_on_their_builder(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    captured_log.allow_errors(MasterFault)
    world = await make_world(config(), build_time=0.2)
    sim, builder = await world.builder("b0")
    build = await world.queue()
    master = world.harness.master
    await master.scan_all()
    await wait_for(reactor, lambda: sim.state.state == WAITING, 60, "the build to end")
    # the librarian's disk refuses new files
    incoming = world.harness.librarian.store.incoming
    incoming.mkdir(parents=True, exist_ok=True)
    incoming.rename(incoming.with_name("incoming.away"))
    incoming.write_bytes(b"not a directory")
    for _ in range(3):
        await master.scan_all()
    # nothing is lost or blamed: the build stays on its builder, which keeps its results
    assert (await store.builds.get(build)).status is BuildStatus.BUILDING
    assert sim.state.state == WAITING
    await nobody_blamed(store)
    assert len(errors(captured_log)) == 1
    assert "the librarian cannot store build results" in errors(captured_log)[0]
    # the disk is back: the build is collected
    incoming.unlink()
    await master.scan_all()
    assert (await store.builds.get(build)).status is BuildStatus.FULLYBUILT
    assert any(m.startswith("Over: librarian") for m in captured_log.messages(LogLevel.info))
    assert len(errors(captured_log)) == 1


@pytest.mark.parametrize("kind", ["missing", "not executable"])
@pytest_twisted.ensureDeferred
async def test_a_missing_vm_reset_command_fails_no_build_and_no_builder(
    reactor: Any, make_world: Any, store: Store, captured_log: Any, tmp_path: Path, kind: str
) -> None:
    captured_log.allow_errors(MasterFault)
    command = tmp_path / "reset-vm"
    if kind == "not executable":
        command.write_text("#!/bin/sh\nexit 0\n")
        command.chmod(stat.S_IRUSR | stat.S_IWUSR)
    clock = task.Clock()
    clock.advance(reactor.seconds())
    world = await make_world(config(vm_resume_command=f"{command} %(vm_host)s"), clock=clock)
    sims = [(await world.builder(f"v{i}", virtualized=True))[0] for i in range(2)]
    builds = [await world.queue(ppa=True) for _ in range(4)]
    master = world.harness.master
    for _ in range(3):
        await master.scan_all()
    await nobody_blamed(store)
    assert not any(c.method == "build" for sim in sims for c in sim.history)
    rows = await store.db.query(
        "SELECT status, suspended_reason FROM buildqueue WHERE build = ANY(%s)",
        ([b.id for b in builds],),
    )
    suspended = [r[1] for r in rows if r[0] == int(BuildQueueStatus.SUSPENDED)]
    assert suspended and all("is missing or not executable" in r for r in suspended)
    # the others are not even claimed while the cause lasts: they wait in the queue
    assert all(r[0] in (0, 2) for r in rows)
    assert len(errors(captured_log)) == 1
    assert "VM reset command" in errors(captured_log)[0]
    # fixed: once their wait is over the jobs are dispatched, and the cause is over
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(stat.S_IRWXU)
    clock.advance(master.config.fault_retry_max)
    await master.resume_waiting()
    await master.scan_all()
    assert all(sim.state.state == BUILDING for sim in sims)
    assert any(m.startswith("Over: VM reset command") for m in captured_log.messages(LogLevel.info))


@pytest_twisted.ensureDeferred
async def test_a_database_outage_is_reported_once_and_blames_nobody(
    reactor: Any,
    make_world: Any,
    store: Store,
    captured_log: Any,
    dsn: str,
    refuse_connections: Any,
) -> None:
    captured_log.allow_errors(MasterFault)
    world = await make_world(config())
    for i in range(4):
        await world.builder(f"b{i}")
    await world.queue()
    master = world.harness.master
    await master.scan_all()
    database = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    with refuse_connections():
        # every connection of the test's database is cut, and none comes back for now
        other = psycopg2.connect(dsn.replace(f"dbname={database}", "dbname=postgres"))
        try:
            with other.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                    " WHERE datname = %s",
                    (database,),
                )
        finally:
            other.close()
        for _ in range(5):
            await master._safe_scan(None)
        # the outage is the pool's to tell, once; the scans that meet it say nothing more
        said = captured_log.warnings() + errors(captured_log)
        assert [m for m in said if "database" in m.lower()] == said, said
        assert len(said) == 1 and said[0].startswith("Lost the database ("), said

    async def scanned() -> bool:
        await master._safe_scan(None)
        return not store.db.unavailable

    await wait_for(reactor, scanned, 60, "the database to come back")
    info = captured_log.messages(LogLevel.info)
    assert sum(m.startswith("The database is back after") for m in info) == 1, info
    await nobody_blamed(store)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_master_short_of_file_descriptors_fails_no_build_and_no_builder(
    reactor: Any, store: Store, dsn: str, tmp_path: Path, process_world: Any
) -> None:
    """A running master (its own process) loses its margin of file descriptors: its soft
    limit is lowered to what it has open (``prlimit``), for a few seconds, while builds
    flow. New connections, accepted ones and new files fail with EMFILE meanwhile: no build
    fails for it, no builder is blamed, the operator gets one error naming the cause, and
    the builds go on once the limit is back."""
    from slavesim import Farm

    world = process_world
    farm = Farm(reactor, tmp_path / "slavesim", build_time=0.3, history_size=100_000)
    for i in range(4):
        sim = await farm.start_builder(f"f{i}", ("i386",))
        await store.builders.new(f"f{i}", sim.url, [world.data.processor_386])
    builds = [await world.queue(f"pkg{i}") for i in range(40)]

    async def built() -> int:
        return int(await world.count(builds, [BuildStatus.FULLYBUILT]))

    async def at_least(n: int) -> bool:
        return await built() >= n

    log = tmp_path / "master.log"
    master = master_process(dsn, world.state, log, "--fault-retry", "1")
    try:
        await wait_for(
            reactor,
            lambda: log.exists() and "buildmaster is running" in log.read_text(errors="replace"),
            60,
            "the master to start",
        )
        await wait_for(reactor, lambda: at_least(4), 60, "the first builds")
        soft, hard = resource.prlimit(master.pid, resource.RLIMIT_NOFILE)
        in_use = len(os.listdir(f"/proc/{master.pid}/fd"))
        before = await built()
        resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (in_use, hard))
        # until the master has met the shortage (said once, however long it lasts)
        await wait_for(
            reactor,
            lambda: "out of file descriptors" in log.read_text(errors="replace"),
            60,
            "the master to run short",
        )
        await task.deferLater(reactor, 1.0, lambda: None)  # the shortage lasts a while
        resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (soft, hard))
        await wait_for(reactor, lambda: at_least(len(builds)), 180, "every build")
        master.send_signal(signal.SIGTERM)
        master.wait(timeout=60)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        await farm.stop()
    assert before < len(builds)
    await nobody_blamed(store)
    text = log.read_text(errors="replace")
    errors_logged = [
        line for line in text.splitlines() if "#error]" in line or "#critical]" in line
    ]
    assert errors_logged, "the master never ran short"
    assert all("out of file descriptors" in line for line in errors_logged), errors_logged
    assert len(errors_logged) == 1, errors_logged
    assert "Traceback" not in text


# -- the report of the master's failures, on a Clock ----------------------------------------


def test_a_cause_is_reported_once_then_again_while_it_lasts(captured_log: Any) -> None:
    captured_log.allow_errors(MasterFault)
    clock = task.Clock()
    faults = FaultLog(clock, repeat=600, retry_initial=10, retry_max=40)
    fault = MasterFault(FILE_DESCRIPTORS, "out of file descriptors")
    for _ in range(50):  # every builder, every scan
        faults.report(fault)
    assert errors(captured_log) == [
        "out of file descriptors; no builder or build is blamed, the work waits and is tried again"
    ]
    clock.advance(600)
    faults.report(fault)
    assert errors(captured_log)[1] == "Still: out of file descriptors (51 times in 10 min)"
    assert len(errors(captured_log)) == 2
    faults.over([FILE_DESCRIPTORS, "never reported"])
    assert "Over: file descriptors (51 failures in 10.0 min)" in captured_log.messages(
        LogLevel.info
    )
    assert faults.causes == frozenset()
    faults.report(fault)  # it comes back: a new report
    assert len(errors(captured_log)) == 3


def test_the_wait_grows_while_the_cause_lasts(captured_log: Any) -> None:
    captured_log.allow_errors(MasterFault)
    clock = task.Clock()
    faults = FaultLog(clock, retry_initial=10, retry_max=40)
    fault = MasterFault(VM_RESET_COMMAND, "no VM reset command")
    assert faults.report(fault) == 10
    clock.advance(4)
    assert faults.report(fault) == 6  # the same wait: many reports of one outage
    assert faults.holds_back(virtualized=True) == VM_RESET_COMMAND
    assert faults.holds_back(virtualized=False) is None  # trusted builders need no VM reset
    clock.advance(6)
    assert faults.holds_back(virtualized=True) is None  # over: one may try
    assert faults.report(fault) == 20  # and failed: twice as long
    clock.advance(20)
    assert faults.report(fault) == 40
    clock.advance(40)
    assert faults.report(fault) == 40  # the ceiling
    faults.over([VM_RESET_COMMAND])
    assert faults.holds_back(virtualized=True) is None
    assert faults.report(fault) == 10  # a new outage starts short again


def test_a_file_the_librarian_cannot_serve_holds_back_only_its_builds(
    captured_log: Any,
) -> None:
    clock = task.Clock()
    faults = FaultLog(clock)
    faults.report(MasterFault("librarian file 5", "bytes missing", level=LogLevel.warn))
    assert faults.holds_back(virtualized=False) is None
    assert faults.holds_back(virtualized=True) is None
    assert faults.causes == {"librarian file 5"}
    assert errors(captured_log) == []  # the librarian reported it as an error itself


def test_which_failures_are_the_masters() -> None:
    import errno as errnos

    from twisted.internet import error as twisted_error

    from buildmaster.librarian import UploadFailed
    from buildmaster.store.database import DatabaseUnavailable

    emfile = twisted_error.ConnectBindError(errnos.EMFILE, "Too many open files")
    fault = classify(emfile)
    assert fault is not None and fault.cause == FILE_DESCRIPTORS
    assert shortage(twisted_error.ConnectionRefusedError()) is None
    assert shortage(OSError(errnos.ENFILE, "File table overflow")) is not None
    upload = UploadFailed("could not store 'x.deb': [Errno 24] Too many open files")
    upload.__cause__ = OSError(errnos.EMFILE, "Too many open files")
    assert classify(upload).cause == FILE_DESCRIPTORS  # type: ignore[union-attr]
    disk = UploadFailed("could not store 'x.deb': [Errno 28] No space left on device")
    assert classify(disk).cause == LIBRARIAN  # type: ignore[union-attr]
    assert classify(DatabaseUnavailable("down")).cause == DATABASE  # type: ignore[union-attr]
    assert classify(ValueError("a bug")) is None


@pytest_twisted.ensureDeferred
async def test_downloads_closed_unread_for_lack_of_descriptors_are_the_masters(
    process_world: Any,
) -> None:
    """Out of file descriptors, Twisted's listening port accepts the waiting connections and
    closes them unread: a builder's download of the chroot is cut, and the librarian never
    sees a request to fail on its side (the file itself opens fine a moment later). The
    builder is not blamed: the master's side is, as a shortage of file descriptors."""
    import errno as errnos
    import socket
    from typing import cast

    from twisted.internet import tcp
    from twisted.logger import ILogObserver, Logger

    from buildmaster.librarian.catalog import get_file
    from buildmaster.masterfaults import DroppedConnectionWatch, librarian_trouble

    librarian = process_world.librarian
    alias = await process_world.add("other-chroot.tar.gz", b"chroot" * 10)
    chroot = await get_file(process_world.store.db, alias)
    mark = librarian.serving_mark
    assert await librarian_trouble(librarian, [chroot], since=mark) is None

    class ShortListener:
        """A listening socket as the kernel answers when the process is out of descriptors:
        EMFILE, then (the reserved descriptor released) one waiting connection, then none."""

        def __init__(self) -> None:
            self.answers: list[Any] = [OSError(errnos.EMFILE, "Too many open files")]
            self.a, self.b = socket.socketpair()
            self.answers += [(self.a, ("10.0.0.7", 4242)), OSError(errnos.EAGAIN, "again")]

        def accept(self) -> Any:
            answer = self.answers.pop(0)
            if isinstance(answer, OSError):
                raise answer
            return answer

    listener = ShortListener()
    reserved = tcp._FileDescriptorReservation(lambda: open(os.devnull))
    reserved.reserve()
    logger = Logger(
        namespace="twisted.internet.tcp.Port",
        observer=cast(ILogObserver, DroppedConnectionWatch(librarian)),
    )
    try:
        list(tcp._accept(logger, range(10), listener, reserved))
        assert listener.a.fileno() == -1  # Twisted closed the connection unread
    finally:
        listener.b.close()
        if reserved.available() and reserved._fileDescriptor is not None:
            reserved._fileDescriptor.close()
    fault = await librarian_trouble(librarian, [chroot], since=mark)
    assert fault is not None and fault.cause == FILE_DESCRIPTORS
    assert "out of file descriptors" in str(fault)
    # a download asked for after the shortage is judged on its own again
    assert await librarian_trouble(librarian, [chroot], since=librarian.serving_mark) is None
