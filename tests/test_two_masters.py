"""Two masters on one database never hand one job to two builders."""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.web import resource

from buildmaster.config import MasterConfig
from buildmaster.enums import BuildStatus, PackagePublishingPocket
from buildmaster.librarian import Librarian
from buildmaster.librarian.farm import farm_identity
from buildmaster.librarian.guard import GuardedSite
from buildmaster.master import OWNERSHIP_LOCK, BuilddMaster
from buildmaster.masterfaults import MasterFault
from buildmaster.service import mount_librarian
from buildmaster.store import Database, Store
from buildmaster.testing import wait_for
from slavesim import Outcome, OutcomeRule


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_from_two_pools_never_share_a_job(
    reactor: Any, store: Store, dsn: str
) -> None:
    from buildmaster.sampledata import load_sample_data

    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    builders = [
        await store.builders.new(f"c{i}", f"http://c{i}:8221/", [data.processor_386])
        for i in range(40)
    ]
    for i in range(25):
        spr = await store.sources.new(f"p{i}", "1", data.hoary)
        build = await store.builds.createBuild(spr, data.hoary_i386, 0, data.primary)  # type: ignore[arg-type]
        await store.queue.createBuildQueueEntry(build)
    other_db = Database(reactor, dsn, size=4)
    await other_db.connect()
    try:
        other = Store(other_db)
        # every builder asks both "masters" at once
        claims = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine((store if i % 2 else other).jobs.claim_next(b))
                for b in builders
                for i in range(2)
            ]
        )
    finally:
        await other_db.close()
    claimed = [c for c in claims if c is not None]
    assert len(claimed) == 26  # every waiting job (25 + the seed's job 2), each once
    assert len({c.id for c in claimed}) == 26
    assert len({c.builder_id for c in claimed}) == 26  # and no builder got two


@pytest_twisted.ensureDeferred
async def test_claims_sharing_statements_in_two_masters_never_share_a_job(
    reactor: Any, store: Store, dsn: str
) -> None:
    """The scanner's claims, which share a statement when they come together: first each
    master for its own builders (as masters that own their builders claim), then every
    builder through both at once, where a shared statement may find one of its builders
    given a job by the other master (the forced case is in test_store.py). Never a job
    twice or a builder with two, and every job claimed in the end (a third round takes
    what a refused statement held locked, if any)."""
    from buildmaster.sampledata import load_sample_data

    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    builders = [
        await store.builders.new(f"s{i}", f"http://s{i}:8221/", [data.processor_386])
        for i in range(40)
    ]

    async def queue(n: int, prefix: str) -> None:
        for i in range(n):
            spr = await store.sources.new(f"{prefix}{i}", "1", data.hoary)
            build = await store.builds.createBuild(
                spr, data.hoary_i386, PackagePublishingPocket.RELEASE, data.primary
            )
            await store.queue.createBuildQueueEntry(build)

    async def claim(s: Store, builder: Any) -> Any:
        claimed = await s.jobs.claim_next_for_dispatch(builder)
        return None if claimed is None else claimed.job

    async def claims(pairs: list[tuple[Store, Any]]) -> list[Any]:
        found = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(claim(s, b)) for s, b in pairs]
        )
        return [c for c in found if c is not None]

    async def waiting() -> int:
        [(n,)] = await store.db.query("SELECT count(*) FROM buildqueue WHERE status = 0")
        return int(n)

    await queue(25, "p")
    other_db = Database(reactor, dsn, size=4)
    await other_db.connect()
    try:
        other = Store(other_db)
        # each master claims for its own half of the farm
        first = await claims([(store if i % 2 else other, b) for i, b in enumerate(builders)])
        assert sorted(c.id for c in first) == sorted(set(c.id for c in first))
        assert len(first) == 26 and await waiting() == 0  # 25 + the seed's job 2
        for s in (store, other):
            [batcher] = s.jobs.claims.values()
            assert batcher.statements < 20  # they did share statements
        # the builders that got nothing, through both masters at once
        idle = [b for b in builders if b.id not in {c.builder_id for c in first}]
        await queue(10, "q")
        second = await claims([(s, b) for b in idle for s in (store, other)])
        third = await claims([(s, b) for b in idle for s in (store, other)])
    finally:
        await other_db.close()
    claimed = first + second + third
    assert len({c.id for c in claimed}) == len(claimed) == 36  # every job, each once
    assert len({c.builder_id for c in claimed}) == 36  # and no builder got two
    assert await waiting() == 0


@pytest_twisted.ensureDeferred
async def test_a_second_master_takes_over_without_building_anything_twice(
    reactor: Any, store: Store, dsn: str, make_world: Any
) -> None:
    """Master A works the farm, B joins; A stops mid-way (its builders' locks go with its
    database session); B takes the builders over, collects what A dispatched and finishes."""
    config = MasterConfig(
        socket_timeout=5.0, scan_interval=0.3, vm_resume_command="true %(vm_host)s"
    )
    world = await make_world(config, build_time=0.5)
    sims = [(await world.builder(f"m{i}"))[0] for i in range(6)]
    builds = [await world.queue() for _ in range(30)]
    async with _two_masters(reactor, dsn, world, config) as (pools, first, second):
        first.startService()
        await first.when_ready()
        await wait_for(
            reactor, lambda: len(first.ownership.owned) == 6, 60, "A to own the builders"
        )
        second.startService()
        await second.when_ready()
        await wait_for(reactor, lambda: _at_least(_built(store, builds), 8), 60, "A to build some")
        # never both on one builder (B gets those A gives back for it, if any by now)
        assert not first.ownership.owned & second.ownership.owned
        await first.stopService()
        await pools[0].close()  # A's session ends: its advisory locks are released
        await wait_for(
            reactor, lambda: _at_least(_built(store, builds), len(builds)), 60, "B to finish"
        )
        assert len(second.ownership.owned) == 6
        # no build was started twice
        started = collections.Counter(
            call.args[0] for sim in sims for call in sim.history if call.method == "build"
        )
        assert set(started) == {b.cookie for b in builds}
        assert max(started.values()) == 1


@pytest_twisted.ensureDeferred
async def test_a_builder_added_to_a_shared_farm_is_taken_by_a_master_at_once(
    reactor: Any, store: Store, dsn: str, make_world: Any
) -> None:
    """Two masters share the farm and an hour lies between two scans of a builder. A builder
    is added whose coming does not change how many builders each master may hold (it would
    otherwise make them look at every builder): told of it (what the API does when it adds
    one), the masters scan its slice, and one of them has it build the waiting job."""
    config = MasterConfig(
        socket_timeout=5.0, scan_interval=3600.0, vm_resume_command="true %(vm_host)s"
    )
    world = await make_world(config, build_time=30.0)
    data = world.data
    active = (await store.db.query("SELECT count(*) FROM builder WHERE active"))[0][0]
    if active % 2 == 0:  # an odd count: one more builder leaves each master's share as it is
        await store.builders.new("pad", "http://127.0.0.1:1/", [data.processor_amd64])
    build = await world.queue()
    async with _two_masters(reactor, dsn, world, config) as (_, first, second):
        for master in (first, second):
            master.startService()
            await master.when_ready()
        await wait_for(
            reactor,
            lambda: first.ownership.share is not None and second.ownership.share is not None,
            30,
            "the masters to count each other",
        )
        shares = (first.ownership.share, second.ownership.share)
        sim = await world.harness.start_builder("late", "i386")
        late = await store.builders.new("late", sim.url, [data.processor_386])
        await first.builder_changed(late)  # not first's yet: every master is told
        await wait_for(
            reactor,
            lambda: _at_least(_building(store, build.id), 1),
            20,
            "the added builder to take the build",
        )
        assert (first.ownership.share, second.ownership.share) == shares
        assert late.id in first.ownership.owned | second.ownership.owned


async def _building(store: Store, build_id: int) -> int:
    return int((await store.builds.get(build_id)).status == BuildStatus.BUILDING)


@contextlib.asynccontextmanager
async def _two_masters(
    reactor: Any, dsn: str, world: Any, config: MasterConfig
) -> AsyncIterator[tuple[list[Database], BuilddMaster, BuilddMaster]]:
    """Two masters, not started, each on its own connection pool to the one database and
    with a librarian of its own, served by its own web server, over the one files
    directory the farm shares (the world's), with the farm's token secret: what each
    hands a builder, the builder fetches from that master."""
    pools = [Database(reactor, dsn, size=4) for _ in range(2)]
    for pool in pools:
        await pool.connect()
    ports = []
    librarians = []
    for pool in pools:
        librarian = Librarian(
            reactor,
            pool,
            world.harness.librarian.root,  # the shared files directory
            "http://127.0.0.1:1/librarian/",  # until it listens
            (await farm_identity(pool)).secret,
        )
        root = resource.Resource()
        mount_librarian(root, librarian)
        port = reactor.listenTCP(
            0, GuardedSite(root, functools.partial(_same, librarian)), interface="127.0.0.1"
        )
        ports.append(port)
        librarian.public_url = f"http://127.0.0.1:{port.getHost().port}/librarian/"
        librarians.append(librarian)
    first, second = (
        BuilddMaster(reactor, Store(p), lib, config)
        for p, lib in zip(pools, librarians, strict=True)
    )
    try:
        yield pools, first, second
    finally:
        for master in (first, second):
            if master.running:
                await master.stopService()
        for port in ports:
            await port.stopListening()
        for pool in pools:
            await pool.close()


def _same(value: Any) -> Any:
    return value


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count >= n)


async def _built(store: Store, builds: list[Any]) -> int:
    rows = await store.db.query(
        "SELECT count(*) FROM build WHERE id = ANY(%s) AND buildstate = %s",
        ([b.id for b in builds], int(BuildStatus.FULLYBUILT)),
    )
    return int(rows[0][0])


async def _until_build_is_sent(reactor: Any, master: BuilddMaster, sim: Any) -> None:
    """Start ``master``; return once its first build() call has reached ``sim``."""
    master.startService()
    await master.when_ready()
    await wait_for(
        reactor,
        lambda: any(call.method == "build" for call in sim.history),
        60,
        "the build() call to reach the builder",
    )


@pytest_twisted.ensureDeferred
async def test_a_master_stopped_while_build_is_unanswered_leaves_the_claim_to_the_next(
    reactor: Any, store: Store, dsn: str, make_world: Any
) -> None:
    """The builder has started the build but its answer has not arrived when the master stops
    (the call is cut short). The job must not go back to the queue: the next master finds the
    builder building it, records that, and collects it; the build is started once."""
    config = MasterConfig(socket_timeout=20.0, scan_interval=0.3)
    world = await make_world(config, build_time=0.5)
    sim, builder = await world.builder("slow")
    sim.faults.withhold_answer = {"build": 15.0}
    build = await world.queue()
    async with _two_masters(reactor, dsn, world, config) as (pools, first, second):
        await _until_build_is_sent(reactor, first, sim)
        await first.stopService()
        await pools[0].close()
        job = (await store.jobs.snapshot(builder.id)).job
        assert job is not None and job.build_id == build.id, "the claim stays with the builder"
        sim.faults.withhold_answer = {}
        second.startService()
        await second.when_ready()

        async def built() -> bool:
            rows = await store.db.query("SELECT buildstate FROM build WHERE id = %s", (build.id,))
            return bool(rows[0][0] == int(BuildStatus.FULLYBUILT))

        await wait_for(reactor, built, 60, "the second master to collect the build")
        assert [call.args[0] for call in sim.history if call.method == "build"] == [build.cookie]
        events = await store.db.query(
            "SELECT kind FROM event WHERE build = %s ORDER BY id", (build.id,)
        )
        assert "released" not in {kind for (kind,) in events}


@pytest.mark.parametrize(
    ("outcome", "state", "private"),
    [
        (Outcome.OK, BuildStatus.FULLYBUILT, False),
        (Outcome.PACKAGEFAIL, BuildStatus.FAILEDTOBUILD, False),
        (Outcome.DEPFAIL, BuildStatus.MANUALDEPWAIT, False),
        (Outcome.CHROOTFAIL, BuildStatus.CHROOTWAIT, False),
        (Outcome.OK, BuildStatus.FULLYBUILT, True),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_build_that_ends_while_no_master_looks_still_gets_its_dispatch_recorded(
    reactor: Any,
    store: Store,
    dsn: str,
    make_world: Any,
    outcome: Outcome,
    state: BuildStatus,
    private: bool,
    captured_log: Any,
) -> None:
    """The master stops between build() and its record, and the build ends before the next
    master looks: the next one records the dispatch it discovers (builder, dates, a
    "dispatched" event saying so) before the end, as for any other build."""
    captured_log.allow_errors(MasterFault)  # the first master's database goes first
    config = MasterConfig(
        socket_timeout=20.0, scan_interval=0.3, vm_resume_command="true %(vm_host)s"
    )
    world = await make_world(config, build_time=0.2)
    sim, builder = await world.builder("quick", virtualized=private)
    world.harness.farm.rules = [OutcomeRule(outcome)]
    if private:
        await store.archives.set_private(world.data.cprov_ppa, True)
    build = await world.queue(ppa=private)
    sim.faults.withhold_answer = {"build": 15.0}
    async with _two_masters(reactor, dsn, world, config) as (pools, first, second):
        await _until_build_is_sent(reactor, first, sim)
        # the master dies before it records the dispatch: its database goes first
        await pools[0].close()
        await first.stopService()
        await wait_for(
            reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the build to end"
        )
        assert (await store.builds.get(build)).status is BuildStatus.NEEDSBUILD, [
            (e.kind, e.message) for e in await store.events.for_build(build.id)
        ]
        sim.faults.withhold_answer = {}
        second.startService()
        await second.when_ready()

        async def ended() -> bool:
            return (await store.builds.get(build)).status is state

        await wait_for(reactor, ended, 60, "the second master to collect the build")
    ended_build = await store.builds.get(build)
    assert ended_build.builder_id == builder.id
    assert ended_build.date_first_dispatched is not None
    assert ended_build.date_started is not None and ended_build.date_finished is not None
    assert ended_build.date_started <= ended_build.date_finished
    events = await store.events.for_build(build.id)
    kinds = [e.kind for e in events]
    dispatched = [e for e in events if e.kind == "dispatched"]
    assert len(dispatched) == 1, kinds
    assert dispatched[0].message == "dispatched to quick (discovered after a restart)"
    assert dispatched[0].builder_id == builder.id
    assert kinds.index("dispatched") < kinds.index("finished")
    assert [call.args[0] for call in sim.history if call.method == "build"] == [build.cookie]


STATEFUL = {"build", "abort", "clean", "ensurepresent"}


@pytest_twisted.ensureDeferred
async def test_a_master_that_loses_its_session_stops_working_its_builders_at_once(
    reactor: Any,
    store: Store,
    dsn: str,
    make_world: Any,
    captured_log: Any,
    refuse_connections: Any,
) -> None:
    """The session holding the builders' locks is cut while builds run, and another
    session takes the locks at once (as another master would). From the moment the master
    finds its session lost, nothing it does reaches those builders (no build, abort, clean
    or download; no more polls), finished builds stay uncollected, until its new session
    holds the locks again: then it takes up the work where it was."""
    captured_log.allow_errors(MasterFault)  # scans skipped while the session is away
    config = MasterConfig(socket_timeout=5.0, scan_interval=0.2)
    world = await make_world(config, build_time=0.3)
    sims = [(await world.builder(f"o{i}"))[0] for i in range(4)]
    builds = [await world.queue() for _ in range(24)]
    master = world.harness.master
    found_out: list[bool] = []
    master.startService()
    await master.when_ready()
    store.db.on_session_dropped(lambda: found_out.append(True))  # after the master's own
    await wait_for(reactor, lambda: _at_least(_built(store, builds), 4), 60, "the first builds")
    assert len(master.ownership.owned) == 4
    ids = sorted(master.ownership.owned)
    [(pid,)] = await store.db.query(
        "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
        (OWNERSHIP_LOCK,),
    )
    other = psycopg2.connect(dsn)  # another master's session
    other.autocommit = True
    try:
        with refuse_connections(), other.cursor() as cur:
            # the master's session is cut and cannot come back for a while; the other
            # session takes the locks at once
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            cur.execute(
                "SELECT pg_advisory_lock(%s, id) FROM unnest(%s::integer[]) AS id",
                (OWNERSHIP_LOCK, ids),
            )
            await _nothing_reaches(reactor, master, sims, found_out)
    finally:
        other.close()  # its session ends: the locks are free
    await wait_for(
        reactor, lambda: len(master.ownership.owned) == 4, 60, "the master to hold them again"
    )
    await wait_for(
        reactor, lambda: _at_least(_built(store, builds), len(builds)), 60, "every build"
    )
    await master.stopService()
    started = collections.Counter(
        call.args[0] for sim in sims for call in sim.history if call.method == "build"
    )
    assert set(started) == {b.cookie for b in builds}
    assert max(started.values()) == 1
    for builder in await store.builders.all():
        assert builder.builderok and builder.failure_count == 0


async def _nothing_reaches(
    reactor: Any, master: Any, sims: list[Any], found_out: list[bool]
) -> None:
    """Once ``master`` has found its session lost, nothing of it reaches the builders."""
    await wait_for(reactor, lambda: bool(found_out), 60, "the master to find it out")
    assert master.ownership.owned == set()
    # it cut every connection to them when it found out: once the builders have seen each
    # one closed, the calls sent before have arrived; from then on, nothing may come
    await wait_for(
        reactor,
        lambda: all(sim.open_connections == 0 for sim in sims),
        60,
        "the master's connections to the builders to close",
    )
    calls_at_loss = {sim.name: len(sim.history) for sim in sims}
    # the builds end meanwhile; then a few scan intervals more (a loaded machine fits fewer
    # scans in them: that only makes the check weaker, never wrong)
    await wait_for(
        reactor,
        lambda: not any(sim.state.state == "BuilderStatus.BUILDING" for sim in sims),
        60,
        "the builds to end",
    )
    await task.deferLater(reactor, 1.0, lambda: None)
    after = [
        (sim.name, call.method)
        for sim in sims
        for call in list(sim.history)[calls_at_loss[sim.name] :]
    ]
    assert [c for c in after if c[1] in STATEFUL] == []
    assert after == []  # no polls either
    waiting = [sim for sim in sims if sim.state.state == "BuilderStatus.WAITING"]
    assert waiting, "the builds ended, and were not collected"
