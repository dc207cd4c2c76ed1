"""A farm with scripted outcomes and injected faults works through a few hundred builds."""

from __future__ import annotations

import collections
import gzip
import hashlib
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import task

from buildmaster.config import MasterConfig
from buildmaster.enums import BuildStatus
from buildmaster.policy import FailurePolicy
from buildmaster.store import Store
from buildmaster.testing import wait_for

#: package name prefix -> the state its builds must end in
EXPECTED = {
    "ok": BuildStatus.FULLYBUILT,
    "fail": BuildStatus.FAILEDTOBUILD,
    "dep": BuildStatus.MANUALDEPWAIT,
    "chroot": BuildStatus.CHROOTWAIT,
    "flaky": BuildStatus.FULLYBUILT,  # given back by one builder, built by another
}
FINAL = {
    BuildStatus.FULLYBUILT,
    BuildStatus.FAILEDTOBUILD,
    BuildStatus.MANUALDEPWAIT,
    BuildStatus.CHROOTWAIT,
}


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_faulty_farm_works_through_a_few_hundred_builds(
    reactor: Any, make_world: Any, store: Store, captured_log: Any
) -> None:
    from slavesim import Outcome, OutcomeRule

    config = MasterConfig(
        socket_timeout=3.0,
        virtualized_socket_timeout=3.0,
        scan_interval=0.25,
        vm_resume_command="true %(vm_host)s",
        probe_initial_delay=0.5,
        probe_max_delay=1.0,
        failure_policy=FailurePolicy(tolerated_scan_failures=2),
    )
    world = await make_world(config, build_time=0.1)
    outcomes = [
        OutcomeRule(Outcome.PACKAGEFAIL, package="fail*", duration=0.1),
        OutcomeRule(Outcome.DEPFAIL, package="dep*", duration=0.1, dependencies="libfoo (>= 2)"),
        OutcomeRule(Outcome.CHROOTFAIL, package="chroot*", duration=0.1),
        OutcomeRule(Outcome.GIVENBACK, package="flaky*", builder="t0", duration=0.1),
        OutcomeRule(Outcome.OK, package="*", duration=0.2),
    ]
    # t4 loses the build it is doing when a scan sees it building: its builds last longer
    # than a scan interval, so a scan does see it building (a 0.2 s build dispatched right
    # after a scan may end before the next one)
    slow_t4 = [
        attrs.evolve(rule, builder="t4", duration=0.6) for rule in outcomes if rule.builder is None
    ]
    world.harness.farm.rules = slow_t4 + outcomes
    sims = {}
    for i in range(10):
        sims[f"t{i}"], _ = await world.builder(f"t{i}")
    for i in range(3):
        sims[f"v{i}"], _ = await world.builder(f"v{i}", virtualized=True)

    builds = []
    for prefix, count, ppa_count in (
        ("ok", 150, 40),
        ("fail", 30, 5),
        ("dep", 20, 0),
        ("chroot", 15, 0),
        ("flaky", 15, 0),
    ):
        for i in range(count):
            builds.append((prefix, await world.queue(f"{prefix}{i}", ppa=i < ppa_count)))
    master = world.harness.master
    master.startService()
    await master.when_ready()

    async def finished() -> int:
        rows = await store.db.query(
            "SELECT count(*) FROM build WHERE id = ANY(%s) AND buildstate = ANY(%s)",
            ([b.id for _, b in builds], [int(s) for s in FINAL]),
        )
        return int(rows[0][0])

    async def progress(n: int) -> bool:
        return await finished() >= n

    async def failed_builders() -> set[str]:
        rows = await store.db.query(
            "SELECT DISTINCT b.name FROM event e JOIN builder b ON b.id = e.builder"
            " WHERE e.kind = 'failure'"
        )
        return {r[0] for r in rows}

    # faults while the farm works
    await wait_for(reactor, lambda: progress(20), 60, "the first builds")
    sims["t1"].faults.hang = True  # accepts, never answers
    sims["t2"].faults.refuse = True  # the daemon is down
    sims["t3"].faults.garbage = "xml"
    sims["t4"].faults.forget_build = True  # loses the build it is doing
    sims["t5"].faults.crash_mid_build = True  # dies in its next build, back after 1 s
    sims["t5"].faults.crash_downtime = 1.0
    sims["t6"].faults.wrong_cookie = "PACKAGEBUILD-424242"
    sims["v0"].faults.latency = 0.3
    await wait_for(reactor, lambda: progress(120), 120, "builds despite the faults")

    async def judged() -> bool:
        return {"t1", "t2", "t3"} <= await failed_builders()

    # the faults last until they were judged (however long a loaded machine takes for that)
    await wait_for(reactor, judged, 120, "the faulty builders to be judged")
    # the broken ones recover (the master re-probes them)
    for name in ("t1", "t2", "t3", "t6"):
        sims[name].faults.clear()
    await wait_for(reactor, lambda: progress(len(builds)), 240, "every build")
    await master.stopService()

    by_state: collections.Counter[BuildStatus] = collections.Counter()
    for prefix, build in builds:
        build = await store.builds.get(build)
        by_state[build.status] += 1
        if build.status is not EXPECTED[prefix]:
            history = "\n".join(
                f"{e.kind} builder={e.builder_id}: {e.message}"
                for e in await store.events.for_build(build.id)
            )
            raise AssertionError(f"{prefix} build {build.id} ended {build.status.name}:\n{history}")
        assert build.log_id is not None
        if build.status is BuildStatus.MANUALDEPWAIT:
            assert build.dependencies == "libfoo (>= 2)"
    assert by_state[BuildStatus.FULLYBUILT] == 165

    # every log and result is in the librarian, and its bytes match its hashes
    rows = await store.db.query(
        "SELECT lfa.id, lfc.sha1 FROM buildfile bf JOIN libraryfilealias lfa ON lfa.id = bf.libraryfile"
        " JOIN libraryfilecontent lfc ON lfc.id = lfa.content"
    )
    assert len(rows) >= 2 * 165
    for alias, sha1 in rows[:60]:
        assert hashlib.sha1(await world.harness.librarian.read_bytes(alias)).hexdigest() == sha1
    logs = await store.db.query(
        "SELECT log FROM build WHERE id = ANY(%s)", ([b.id for _, b in builds],)
    )
    for (log,) in logs[:30]:
        assert b"PACKAGEBUILD-" in gzip.decompress(await world.harness.librarian.read_bytes(log))
    # nothing stored twice
    duplicates = await store.db.query(
        "SELECT bf.build, bf.filename FROM buildfile bf GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert duplicates == []
    # the faulty builders were judged, with their reasons in the history
    assert {"t1", "t2", "t3"} <= await failed_builders()
    lost = await store.db.query("SELECT count(*) FROM event WHERE kind = 'lost'")
    assert lost[0][0] >= 1
    await task.deferLater(reactor, 0, lambda: None)
