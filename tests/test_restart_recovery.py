"""Kill the master (SIGKILL) at random points while a farm works, restart it, many times:
nothing is lost, nothing is built twice, nothing is stored twice."""

from __future__ import annotations

import collections
import hashlib
import random
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from buildmaster.enums import BuildStatus
from buildmaster.store import Store
from buildmaster.testing import master_process, wait_for


def _running(log: Path) -> bool:
    return log.exists() and "buildmaster is running" in log.read_text(errors="replace")


#: what each kind of package ends as (slavesim's outcome rules below)
EXPECTED = {
    "pkg": BuildStatus.FULLYBUILT,
    "fail": BuildStatus.FAILEDTOBUILD,
    "dep": BuildStatus.MANUALDEPWAIT,
    "ppa": BuildStatus.FULLYBUILT,
}


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigkill_at_random_points_loses_nothing(
    reactor: Any, store: Store, dsn: str, tmp_path: Path, process_world: Any
) -> None:
    from slavesim import Farm, Outcome, OutcomeRule

    world = process_world
    data, librarian, state = world.data, world.librarian, world.state
    ppa = await store.archives.set_private(data.cprov_ppa, True)
    # the builders outlive the master: they run here, in the test's process; the
    # virtualized ones have their VMs reset for real (a new machine each time)
    rules = [
        OutcomeRule(Outcome.PACKAGEFAIL, package="fail*"),
        OutcomeRule(Outcome.DEPFAIL, package="dep*", dependencies="libfoo (>= 2)"),
    ]
    farm = Farm(reactor, tmp_path / "slavesim", build_time=0.5, rules=rules, history_size=100_000)
    sims = []
    for i in range(6):
        sim = await farm.start_builder(f"k{i}", ("i386",))
        await store.builders.new(f"k{i}", sim.url, [data.processor_386])
        sims.append(sim)
    virtualized = set()
    for i in range(2):
        sim = await farm.start_builder(f"v{i}", ("i386",))
        builder = await store.builders.new(
            f"v{i}", sim.url, [data.processor_386], virtualized=True, vm_host=f"v{i}.vm"
        )
        sims.append(sim)
        virtualized.add(builder.id)
    builds = []
    for i in range(132):
        kind = "ppa" if i >= 120 else "fail" if i % 10 == 3 else "dep" if i % 10 == 7 else "pkg"
        if kind == "ppa":
            build = await world.queue(f"{kind}{i}", ppa, restricted=True)
        else:
            build = await world.queue(f"{kind}{i}")
        builds.append((kind, build))

    async def ended() -> int:
        return int(await world.count([b for _, b in builds], list(EXPECTED.values())))

    async def finished() -> bool:
        return await ended() == len(builds)

    def calls() -> int:
        return sum(len(sim.history) for sim in sims)

    async def more_ended(than: int) -> bool:
        return await ended() > than

    def reached(target: int) -> bool:
        return calls() >= target

    reset = ("--vm-resume-command", farm.vm_reset_command())
    chooser = random.Random(20261127)
    progress = []
    try:
        for attempt in range(14):
            log = tmp_path / f"master-{attempt}.log"
            before = await ended()
            master = master_process(dsn, state, log, *reset)
            # once it runs and has ended a build, it dies somewhere in its work (claiming,
            # dispatching, collecting, cleaning): after a random number of calls to the
            # builders, not of seconds, which a loaded machine would stretch
            await wait_for(reactor, partial(_running, log), 120, "the master to start")
            await wait_for(reactor, partial(more_ended, before), 120, "a build ended")
            target = calls() + chooser.randint(0, 30)
            await wait_for(reactor, partial(reached, target), 120, "calls to the builders")
            master.send_signal(signal.SIGKILL)
            master.wait()
            progress.append(await ended())
        master = master_process(dsn, state, tmp_path / "master-final.log", *reset)
        await wait_for(reactor, finished, 180, "every build to finish after the restarts")
        master.send_signal(signal.SIGTERM)
        master.wait(timeout=60)
    finally:
        if master.poll() is None:
            master.kill()
        await farm.stop()
    # the kills fell while the farm was working: each master finished builds before it
    # was killed, and the last master still had work to do
    assert len(progress) == 14 and 0 < progress[-1] < len(builds)
    assert progress == sorted(set(progress)), progress

    # every build ended as its package does, with its log, its files (whose bytes match their
    # hashes), its dispatch, builder and dates, and the events that say so, in order
    for kind, build in builds:
        build = await store.builds.get(build)
        assert build.status is EXPECTED[kind], (kind, build)
        assert build.log_id is not None
        assert build.builder_id is not None
        assert (build.builder_id in virtualized) is (kind == "ppa")
        assert build.date_first_dispatched is not None and build.date_started is not None
        assert build.date_finished is not None
        assert build.date_first_dispatched <= build.date_started <= build.date_finished
        files = await store.builds.files(build)
        if build.status is BuildStatus.FULLYBUILT:
            assert {f.filename.rsplit(".", 1)[-1] for f in files} >= {"changes", "deb"}
        else:
            assert files == []
        if build.status is BuildStatus.MANUALDEPWAIT:
            assert build.dependencies == "libfoo (>= 2)"
        for f in files:
            assert hashlib.sha1(await librarian.read_bytes(f.file.id)).hexdigest() == f.file.sha1
            assert f.file.expires is None
            assert f.file.restricted is (kind == "ppa")
        kinds = [e.kind for e in await store.events.for_build(build.id)]
        assert kinds.count("finished") == 1 and kinds[-1] == "finished", kinds
        assert "dispatched" in kinds, kinds
        last_dispatch = len(kinds) - 1 - kinds[::-1].index("dispatched")
        assert not {"requeued", "lost", "released"} & set(kinds[last_dispatch:]), kinds
    # no build was started twice
    started = collections.Counter(
        c.args[0] for sim in sims for c in sim.history if c.method == "build"
    )
    assert set(started) == {b.cookie for _, b in builds}
    assert max(started.values()) == 1, [c for c, n in started.items() if n > 1]
    # no file stored twice: one content per hash (the librarian's rule), one permanent alias
    # per result, and whatever a killed master left half-linked is provisional (expires)
    duplicates = await store.db.query(
        "SELECT content, filename FROM libraryfilealias WHERE expires IS NULL GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert duplicates == []
    stray = await store.db.query(
        "SELECT count(*) FROM libraryfilealias lfa WHERE expires IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM buildfile bf WHERE bf.libraryfile = lfa.id)"
        " AND NOT EXISTS (SELECT 1 FROM build b WHERE b.log = lfa.id)"
        " AND NOT EXISTS (SELECT 1 FROM sourcepackagereleasefile f WHERE f.libraryfile = lfa.id)"
        " AND NOT EXISTS (SELECT 1 FROM distroarchseries d WHERE d.chroot = lfa.id)"
    )
    assert stray[0][0] == 0
