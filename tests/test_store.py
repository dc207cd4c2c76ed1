"""The async store, in the seed's vocabulary, against a real database."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from buildmaster.enums import (
    ArchivePurpose,
    BuildQueueStatus,
    BuildStatus,
    PackagePublishingPocket,
    SourcePackageFileType,
)
from buildmaster.model import Builder, BuildQueue
from buildmaster.sampledata import SampleData, add_metadata_only_file, load_sample_data
from buildmaster.store import ConstraintViolation, Database, NotFound, Store
from buildmaster.store.jobs import JobGone
from buildmaster.transitions import IllegalTransition


@pytest_twisted.async_yield_fixture
async def seeded(store: Store) -> Any:
    yield await load_sample_data(store)


@pytest_twisted.ensureDeferred
async def test_builder_set_changes(store: Store, seeded: SampleData) -> None:
    bob = await store.builders.set_builderok(
        seeded.bob, False, "(111, 'Connection refused')", by_master=True
    )
    assert (bob.builderok, bob.failnotes, bob.failed_by_master) == (
        False,
        "(111, 'Connection refused')",
        True,
    )
    bob = await store.builders.set_builderok(bob, True)
    assert (bob.builderok, bob.failnotes, bob.failed_by_master, bob.failure_count) == (
        True,
        None,
        False,
        0,
    )

    bob = await store.builders.set_trusted(bob, False)
    assert bob.virtualized and not bob.trusted
    bob = await store.builders.set_vm_host(bob, "localhost.ppa")
    assert bob.vm_host == "localhost.ppa"
    bob = await store.builders.set_manual(bob, True)
    assert bob.manual
    assert await store.builders.getByName("bob") == bob  # what the setters return is what is stored


@pytest_twisted.ensureDeferred
async def test_builder_registration_refuses_nonsense(store: Store, seeded: SampleData) -> None:
    with pytest.raises(ConstraintViolation, match="builder_name_key"):
        await store.builders.new("bob", "http://elsewhere:8221/", [seeded.processor_386])
    with pytest.raises(ConstraintViolation, match="builder_url_check"):
        await store.builders.new("newbie", "ftp://x/", [seeded.processor_386])
    assert await store.builders.count() == 2
    newbie = await store.builders.new(
        "newbie", "http://newbie:8221/", [seeded.processor_386, seeded.processor_amd64]
    )
    assert newbie.processor_ids == tuple(
        sorted((seeded.processor_386.id, seeded.processor_amd64.id))
    )
    assert await store.builders.count() == 3
    assert [e.kind for e in await store.events.for_builder(newbie.id)] == ["registered"]


@pytest_twisted.ensureDeferred
async def test_add_or_update_chroot(store: Store, seeded: SampleData) -> None:
    assert await store.distributions.get_chroot(seeded.hoary_i386) is None
    first = await add_metadata_only_file(
        store, "chroot-ubuntu-hoary-i386.tar.bz2", b"one", "application/x-bzip2"
    )
    das = await store.distributions.addOrUpdateChroot(seeded.hoary_i386, first)
    assert das.chroot_id == first
    second = await add_metadata_only_file(
        store, "chroot-ubuntu-hoary-i386.tar.bz2", b"two", "application/x-bzip2"
    )
    await store.distributions.addOrUpdateChroot(seeded.hoary_i386, second)
    chroot = await store.distributions.get_chroot(seeded.hoary_i386)
    assert chroot is not None and chroot.id == second and chroot.filesize == 3
    assert (await store.distributions.get_chroot(seeded.hoary_amd64)) is None


@pytest_twisted.ensureDeferred
async def test_create_build_and_queue_entry_for_a_ppa(store: Store, seeded: SampleData) -> None:
    dsc = await add_metadata_only_file(store, "pmount_0.1-1.dsc", b"Source: pmount\n", "text/plain")
    spr = await store.sources.new(
        "pmount", "0.1-1", seeded.hoary, component="main", files=[(dsc, SourcePackageFileType.DSC)]
    )
    build = await store.builds.createBuild(
        spr, seeded.hoary_i386, PackagePublishingPocket.RELEASE, seeded.cprov_ppa
    )
    assert build.status is BuildStatus.NEEDSBUILD and build.is_virtualized
    assert build.processor_id == seeded.processor_386.id
    assert build.cookie == f"PACKAGEBUILD-{build.id}"

    job = await store.queue.createBuildQueueEntry(build)
    assert job.id == 3  # the seed's queue entry 3
    assert job.virtualized and job.builder_id is None and job.status is BuildQueueStatus.WAITING
    assert job.lastscore == 1500 + 1000 + 5  # release pocket, main, low urgency
    assert await store.queue.get_for_build(build) == job


@pytest_twisted.ensureDeferred
async def test_private_archives_score_higher(store: Store, seeded: SampleData) -> None:
    await store.archives.set_private(seeded.cprov_ppa, True)
    await store.archives.set_relative_build_score(seeded.cprov_ppa, 100)
    spr = await store.sources.new("secret", "1.0", seeded.hoary)
    build = await store.builds.createBuild(
        spr, seeded.hoary_i386, PackagePublishingPocket.SECURITY, seeded.cprov_ppa
    )
    job = await store.queue.createBuildQueueEntry(build)
    assert job.lastscore == 10000 + 100 + 5 + 4500 + 1000


@pytest_twisted.ensureDeferred
async def test_a_private_archive_has_a_password_for_builders(
    store: Store, seeded: SampleData
) -> None:
    assert seeded.cprov_ppa.buildd_secret is None  # public: none needed
    ppa = await store.archives.set_private(seeded.cprov_ppa, True)
    secret = ppa.buildd_secret
    assert secret is not None and len(secret) >= 16
    assert secret not in repr(ppa)  # never in a log line
    assert (await store.archives.set_private(ppa, True)).buildd_secret == secret  # kept
    mine = await store.archives.set_buildd_secret(ppa, "s3cret-for-the-archive_server")
    assert mine.buildd_secret == "s3cret-for-the-archive_server"
    for bad in ("short", "has:colon-and-@-sign-in-it", "spaces are not allowed here"):
        with pytest.raises(ValueError, match="buildd secret"):
            await store.archives.set_buildd_secret(ppa, bad)
    with pytest.raises(ConstraintViolation):  # the schema refuses it too
        await store.db.execute(
            "UPDATE archive SET buildd_secret = 'user:pw@host' WHERE id = %s", (ppa.id,)
        )
    assert (await store.archives.get(ppa)).buildd_secret == "s3cret-for-the-archive_server"
    other = await store.persons.new("mdz", "Matt Zimmerman")
    created = await store.archives.new(
        other, seeded.primary.distribution_id, ArchivePurpose.PPA, private=True
    )
    assert created.buildd_secret and created.buildd_secret != mine.buildd_secret


@pytest_twisted.ensureDeferred
async def test_destroy_self_removes_only_the_queue_entry(store: Store, seeded: SampleData) -> None:
    lost = await store.queue.get(seeded.lost_job_id)
    await store.queue.destroySelf(lost)
    with pytest.raises(NotFound):
        await store.queue.get(seeded.lost_job_id)
    assert await store.queue.get_for_builder(seeded.bob) is None
    assert (await store.builds.get(lost.build_id)).status is BuildStatus.BUILDING
    assert [e.kind for e in await store.events.for_build(lost.build_id)][-1] == "dequeued"


@pytest_twisted.ensureDeferred
async def test_build_state_changes_follow_the_rules(store: Store, seeded: SampleData) -> None:
    lost = await store.queue.get(seeded.lost_job_id)
    build = await store.builds.set_status(
        lost.build_id, BuildStatus.FAILEDTOBUILD, reason="bob died"
    )
    assert build.status is BuildStatus.FAILEDTOBUILD and build.date_finished is not None
    assert build.failure_reason == "bob died"
    with pytest.raises(IllegalTransition, match="cannot go from FAILEDTOBUILD to FULLYBUILT"):
        await store.builds.set_status(build, BuildStatus.FULLYBUILT)
    assert (await store.builds.get(build)).status is BuildStatus.FAILEDTOBUILD
    history = [e.message for e in await store.events.for_build(build.id) if e.kind == "state"]
    assert history == ["BUILDING -> FAILEDTOBUILD: bob died"]


@pytest_twisted.ensureDeferred
async def test_find_build_candidate_rules(store: Store, seeded: SampleData) -> None:
    await store.queue.destroySelf(seeded.lost_job_id)
    bob = await store.builders.getByName("bob")
    job = await store.queue.findBuildCandidate(bob)
    assert job is not None and job.id == seeded.waiting_job_id
    assert (await store.queue.get(job)).builder_id is None  # finding is not claiming

    # a PPA job is never offered to a trusted builder
    spr = await store.sources.new("pmount", "0.1-1", seeded.hoary)
    ppa_build = await store.builds.createBuild(
        spr, seeded.hoary_i386, PackagePublishingPocket.RELEASE, seeded.cprov_ppa
    )
    ppa_job = await store.queue.createBuildQueueEntry(ppa_build)
    await store.db.execute("UPDATE buildqueue SET lastscore = 99999 WHERE id = %s", (ppa_job.id,))
    assert (await store.queue.findBuildCandidate(bob)).id == seeded.waiting_job_id  # type: ignore[union-attr]

    # and a trusted job never to a virtualized builder
    bob = await store.builders.set_trusted(bob, False)
    assert (await store.queue.findBuildCandidate(bob)).id == ppa_job.id  # type: ignore[union-attr]

    # wrong processor, manual mode, or a failed builder: nothing
    newbie = await store.builders.new("amd", "http://amd:8221/", [seeded.processor_amd64])
    assert await store.queue.findBuildCandidate(newbie) is None
    assert await store.queue.findBuildCandidate(await store.builders.set_manual(bob, True)) is None
    bob = await store.builders.set_manual(bob, False)
    assert (
        await store.queue.findBuildCandidate(
            await store.builders.set_builderok(bob, False, "broken")
        )
        is None
    )


@pytest_twisted.ensureDeferred
async def test_highest_score_first_then_oldest(store: Store, seeded: SampleData) -> None:
    await store.queue.destroySelf(seeded.lost_job_id)
    jobs = []
    for name in ("a1", "a2", "a3"):
        spr = await store.sources.new(name, "1", seeded.hoary)
        build = await store.builds.createBuild(
            spr, seeded.hoary_i386, PackagePublishingPocket.RELEASE, seeded.primary
        )
        jobs.append(await store.queue.createBuildQueueEntry(build))
    await store.db.execute(
        "UPDATE buildqueue SET lastscore = 5000 WHERE id IN (%s, %s)", (jobs[1].id, jobs[2].id)
    )
    bob = await store.builders.getByName("bob")
    assert (await store.queue.findBuildCandidate(bob)).id == jobs[1].id  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_the_claim_for_dispatch_brings_the_builds_context_along(
    store: Store, seeded: SampleData
) -> None:
    claimed = await store.jobs.claim_next_for_dispatch(seeded.frog)
    assert claimed is not None
    assert claimed.job.id == seeded.waiting_job_id
    assert claimed.job.builder_id == seeded.frog.id
    assert claimed.job.status is BuildQueueStatus.RUNNING
    # the same context a separate read gives: release, architecture, archives, files
    context = await store.jobs.context(claimed.job.build_id)
    assert claimed.context == context
    assert context.build.id == claimed.job.build_id and context.files
    assert (await store.builders.get(seeded.frog.id)).clean_status.name == "DIRTY"
    # frog has its job now: a second claim finds nothing for it
    assert await store.jobs.claim_next_for_dispatch(seeded.frog) is None
    assert (await store.queue.get(seeded.waiting_job_id)).builder_id == seeded.frog.id


async def waiting_jobs(
    store: Store, seeded: SampleData, prefix: str, scores: list[int], virtualized: bool = False
) -> None:
    """A waiting job for each score (in a PPA when ``virtualized``), on i386."""
    archive = seeded.cprov_ppa if virtualized else seeded.primary
    for i, score in enumerate(scores):
        spr = await store.sources.new(f"{prefix}-src{i}", "1", seeded.hoary)
        build = await store.builds.createBuild(
            spr, seeded.hoary_i386, PackagePublishingPocket.RELEASE, archive
        )
        job = await store.queue.createBuildQueueEntry(build)
        await store.db.execute(
            "UPDATE buildqueue SET lastscore = %s WHERE id = %s", (score, job.id)
        )


async def best_waiting(store: Store, seeded: SampleData, virtualized: bool = False) -> list[int]:
    rows = await store.db.query(
        "SELECT id FROM buildqueue WHERE status = 0 AND builder IS NULL AND processor = %s"
        " AND virtualized = %s ORDER BY lastscore DESC, id",
        (seeded.processor_386.id, virtualized),
    )
    return [r[0] for r in rows]


def in_asking_order(got: list[int | None], best: list[int]) -> bool:
    """Whether builders that shared a statement got the best jobs in the order they asked
    (the statement ran alongside the lone claims, so which jobs were left varies)."""
    jobs = [j for j in got if j is not None]
    return got[: len(jobs)] == jobs and jobs == sorted(jobs, key=best.index)


async def claim_together(store: Store, builders: list[Builder]) -> list[tuple[bool, Any]]:
    return await defer.DeferredList(
        [defer.Deferred.fromCoroutine(store.jobs.claim_next_for_dispatch(b)) for b in builders],
        consumeErrors=True,
    )


@pytest_twisted.ensureDeferred
async def test_builders_claiming_together_share_a_statement_each_with_a_job_of_its_own(
    store: Store, seeded: SampleData
) -> None:
    await waiting_jobs(store, seeded, "c", [700, 100, 900, 300, 500, 900, 200])
    best = await best_waiting(store, seeded)
    builders = [
        await store.builders.new(f"c{i}", f"http://c{i}.example:8221/", [seeded.processor_386])
        for i in range(len(best) + 2)
    ]
    ppa_builder = await store.builders.new("cv", "http://cv.example:8221/", [seeded.processor_386])
    ppa_builder = await store.builders.set_trusted(ppa_builder, False)
    await waiting_jobs(store, seeded, "cv", [50000], virtualized=True)
    ppa_best = await best_waiting(store, seeded, virtualized=True)
    results = await claim_together(store, [*builders, ppa_builder])
    assert all(ok for ok, _ in results), results
    claims = [value for _, value in results]
    kind = store.jobs.claims[((seeded.processor_386.id,), False)]
    # the first two alone (two statements may be in flight), the rest of the kind in one
    assert kind.statements == 3
    # each waiting job to exactly one builder; two builders get nothing
    got = [c.job.id if c is not None else None for c in claims[: len(builders)]]
    assert sorted(j for j in got if j is not None) == sorted(best)
    assert got.count(None) == 2
    assert in_asking_order(got[2:], best)
    # a PPA job never went to a trusted builder, nor the other way round
    assert claims[-1] is not None and claims[-1].job.id == ppa_best[0]
    for builder, claim in zip(builders, claims, strict=False):
        if claim is None:
            continue
        assert claim.job.builder_id == builder.id
        assert claim.job.status is BuildQueueStatus.RUNNING
        assert claim.context == await store.jobs.context(claim.job.build_id)
        assert (await store.queue.get(claim.job.id)).builder_id == builder.id
        assert (await store.builders.get(builder.id)).clean_status.name == "DIRTY"
    assert await best_waiting(store, seeded) == []


@pytest_twisted.ensureDeferred
async def test_claims_that_come_back_together_are_handed_out_one_per_pace(
    reactor: Any, store: Store, seeded: SampleData
) -> None:
    """Their builders would otherwise all fetch their files at the same moment."""
    store.jobs.claim_pace = 0.05
    await waiting_jobs(store, seeded, "p", [10, 20, 30, 40, 50, 60])
    builders = [
        await store.builders.new(f"p{i}", f"http://p{i}.example:8221/", [seeded.processor_386])
        for i in range(6)
    ]
    handed_out: list[float] = []

    def out(claimed: Any) -> Any:
        handed_out.append(reactor.seconds())
        return claimed

    claims = await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(store.jobs.claim_next_for_dispatch(b)).addCallback(out)
            for b in builders
        ]
    )
    assert all(c is not None for c in claims)
    assert store.jobs.claims[((seeded.processor_386.id,), False)].statements == 3
    # four of them came back from one statement: still, one per 50 ms
    assert handed_out[-1] - handed_out[0] >= 5 * 0.05 - 0.005


@pytest_twisted.ensureDeferred
async def test_a_shared_claim_that_breaks_a_constraint_is_made_again_claim_by_claim(
    reactor: Any, dsn: str, store: Store, seeded: SampleData
) -> None:
    """Builder 4 has a job already (the shared statement leaves it out); builder 2 is given
    one by another master while the shared statement runs (it then breaks the unique key,
    and the claims are made one by one)."""
    await waiting_jobs(store, seeded, "k", [10, 20, 30, 40, 50, 60, 70])
    builders = [
        await store.builders.new(f"k{i}", f"http://k{i}.example:8221/", [seeded.processor_386])
        for i in range(6)
    ]
    waiting = await best_waiting(store, seeded)
    await store.db.execute(
        "UPDATE buildqueue SET builder = %s, status = 1 WHERE id = %s",
        (builders[4].id, waiting[-1]),
    )
    # the job the other master takes is another owner's: a claim charges its owner's usage
    # (a row the other master's claim holds until it commits), and the claims of the
    # primary's jobs should not wait for that
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = (SELECT owner FROM archive WHERE id = %s)"
        " WHERE id = %s",
        (seeded.cprov_ppa.id, waiting[-2]),
    )
    other = Database(reactor, dsn, size=2)
    await other.connect()
    try:
        release: defer.Deferred[None] = defer.Deferred()

        async def give_a_job(tx: Any) -> None:
            await tx.execute(
                "UPDATE buildqueue SET builder = %s, status = 1 WHERE id = %s",
                (builders[2].id, waiting[-2]),
            )
            await release

        async def until_a_backend(condition: str) -> None:
            deadline = reactor.seconds() + 60
            while reactor.seconds() < deadline:
                [(n,)] = await other.query(
                    "SELECT count(*) FROM pg_stat_activity"
                    f" WHERE datname = current_database() AND {condition}"
                )
                if n:
                    return
            raise AssertionError(f"no backend of this database with {condition}")

        meanwhile = other.transaction(give_a_job)
        await until_a_backend("state = 'idle in transaction'")
        assert ((seeded.processor_386.id,), False) not in store.jobs.claims  # none so far
        claiming = defer.Deferred.fromCoroutine(claim_together(store, builders))
        # the shared statement waits for the other master's job to be committed
        await until_a_backend("wait_event_type = 'Lock'")
        release.callback(None)
        await meanwhile
        results = await claiming
    finally:
        await other.close()
    assert all(ok for ok, _ in results), results
    got = [c.job.id if c is not None else None for _, c in results]
    assert got[2] is None and got[4] is None
    claimed = [j for j in got if j is not None]
    assert len(set(claimed)) == 4 and set(claimed) <= set(waiting[:-2])
    # two alone, the shared one refused, then each of its four alone
    assert store.jobs.claims[((seeded.processor_386.id,), False)].statements == 7
    assert (await store.queue.get(waiting[-2])).builder_id == builders[2].id
    assert (await store.queue.get(waiting[-1])).builder_id == builders[4].id


@pytest_twisted.ensureDeferred
async def test_a_builder_that_has_a_job_is_left_out_of_a_shared_claim(
    store: Store, seeded: SampleData
) -> None:
    await waiting_jobs(store, seeded, "h", [10, 20, 30, 40, 50, 60])
    builders = [
        await store.builders.new(f"h{i}", f"http://h{i}.example:8221/", [seeded.processor_386])
        for i in range(6)
    ]
    taken = (await best_waiting(store, seeded))[-1]
    await store.db.execute(
        "UPDATE buildqueue SET builder = %s, status = 1 WHERE id = %s", (builders[4].id, taken)
    )
    best = await best_waiting(store, seeded)
    results = await claim_together(store, builders)
    got = [c.job.id if c is not None else None for _, c in results]
    assert got[4] is None
    claimed = [j for j in got if j is not None]
    assert len(set(claimed)) == 5 and set(claimed) <= set(best)
    assert in_asking_order([got[i] for i in (2, 3, 5)], best)
    assert store.jobs.claims[((seeded.processor_386.id,), False)].statements == 3
    assert (await store.queue.get(taken)).builder_id == builders[4].id


async def claimed_jobs(
    store: Store, seeded: SampleData, prefix: str, count: int
) -> tuple[list[Builder], list[BuildQueue]]:
    """``count`` builders named ``<prefix><i>``, each with a job of its own claimed."""
    builders, jobs = [], []
    for i in range(count):
        builder = await store.builders.new(
            f"{prefix}{i}", f"http://{prefix}{i}.example:8221/", [seeded.processor_386]
        )
        spr = await store.sources.new(f"{prefix}-src{i}", "1", seeded.hoary)
        build = await store.builds.createBuild(
            spr, seeded.hoary_i386, PackagePublishingPocket.RELEASE, seeded.primary
        )
        job = await store.queue.createBuildQueueEntry(build)
        await store.db.execute(
            "UPDATE buildqueue SET builder = %s, status = 1 WHERE id = %s", (builder.id, job.id)
        )
        builders.append(builder)
        jobs.append(job)
    return builders, jobs


@pytest_twisted.ensureDeferred
async def test_dispatches_recorded_together_share_a_statement_and_a_lost_job_fails_alone(
    store: Store, seeded: SampleData
) -> None:
    builders, jobs = await claimed_jobs(store, seeded, "d", 8)
    await store.db.execute("UPDATE builder SET failure_count = 2 WHERE id = %s", (builders[5].id,))
    # one job was taken away from its builder meanwhile (requeued)
    await store.db.execute(
        "UPDATE buildqueue SET builder = NULL, status = 0 WHERE id = %s", (jobs[3].id,)
    )
    now = datetime.datetime(2026, 11, 28, 8, 0, tzinfo=datetime.UTC)
    statements = store.jobs.dispatches.statements
    results: list[tuple[bool, Any]] = await defer.DeferredList(
        [
            defer.Deferred.fromCoroutine(store.jobs.record_dispatch(j, b, now))
            for j, b in zip(jobs, builders, strict=True)
        ],
        consumeErrors=True,
    )
    # the first two alone (two statements may be in flight), the six that came meanwhile in one
    assert store.jobs.dispatches.statements - statements == 3
    assert [ok for ok, _ in results] == [True, True, True, False, True, True, True, True]
    assert isinstance(results[3][1].value, JobGone)
    for i, (job, builder) in enumerate(zip(jobs, builders, strict=True)):
        build = await store.builds.get(job.build_id)
        events = await store.db.query(
            "SELECT builder, message FROM event WHERE build = %s AND kind = 'dispatched'",
            (job.build_id,),
        )
        if i == 3:
            assert build.status is BuildStatus.NEEDSBUILD and events == []
            continue
        assert build.status is BuildStatus.BUILDING
        assert (build.builder_id, build.date_started) == (builder.id, now)
        assert events == [(builder.id, f"dispatched to d{i}")]
        assert (await store.queue.get(job.id)).date_started == now
    # a dispatch proves nothing of a builder's health (it may lose every build it accepts)
    assert (await store.builders.get(builders[5].id)).failure_count == 2


@pytest_twisted.ensureDeferred
async def test_builds_ending_together_share_a_statement_each_with_its_own_outcome(
    store: Store, seeded: SampleData
) -> None:
    now = datetime.datetime(2026, 11, 28, 9, 0, tzinfo=datetime.UTC)
    builders, jobs = await claimed_jobs(store, seeded, "e", 6)
    for job, builder in zip(jobs, builders, strict=True):
        await store.jobs.record_dispatch(job, builder, now)
    await store.db.execute(
        "UPDATE builder SET failure_count = 2 WHERE id = ANY(%s)", ([b.id for b in builders],)
    )
    aliases = [
        await add_metadata_only_file(store, name, name.encode(), "application/octet-stream")
        for name in ("e-src0.deb", "e-src0.changes", "e-src0.log", "e-src1.log")
    ]
    await store.db.execute(  # stored provisional, as a collection stores them
        "UPDATE libraryfilealias SET expires = now() + interval '1 day' WHERE id = ANY(%s)",
        (aliases,),
    )
    # job 3 was taken away meanwhile; build 4 was already ended by someone else
    await store.db.execute(
        "UPDATE buildqueue SET builder = NULL, status = 0, date_started = NULL WHERE id = %s",
        (jobs[3].id,),
    )
    await store.db.execute("UPDATE build SET buildstate = 1 WHERE id = %s", (jobs[4].build_id,))
    ends: list[dict[str, Any]] = [
        dict(
            state=BuildStatus.FULLYBUILT,
            log=aliases[2],
            files=[("e-src0.deb", aliases[0]), ("e-src0.changes", aliases[1])],
        ),
        dict(state=BuildStatus.FAILEDTOBUILD, log=aliases[3]),
        dict(state=BuildStatus.MANUALDEPWAIT, dependencies="libfoo (>= 2)"),
        dict(state=BuildStatus.FULLYBUILT),
        dict(state=BuildStatus.FAILEDTOBUILD),
        dict(state=BuildStatus.CHROOTWAIT, reason="no chroot"),
    ]
    statements = store.jobs.finishes.statements
    order = [2, 5, 0, 1, 3, 4]  # the first two go alone, the other four in one statement
    answers: list[tuple[bool, Any]] = await defer.DeferredList(
        [
            defer.Deferred.fromCoroutine(
                store.jobs.finish(jobs[i], builders[i], now=now, **ends[i])
            )
            for i in order
        ],
        consumeErrors=True,
    )
    assert store.jobs.finishes.statements - statements == 3
    results = dict(zip(order, answers, strict=True))
    assert [results[i][1] for i in (0, 1, 2, 3, 5)] == [True, True, True, False, True]
    assert not results[4][0] and isinstance(results[4][1].value, IllegalTransition)

    states = [(await store.builds.get(j.build_id)).status for j in jobs]
    assert states == [
        BuildStatus.FULLYBUILT,
        BuildStatus.FAILEDTOBUILD,
        BuildStatus.MANUALDEPWAIT,
        BuildStatus.BUILDING,  # not this builder's job any more: untouched
        BuildStatus.FULLYBUILT,  # as someone else left it
        BuildStatus.CHROOTWAIT,
    ]
    first = await store.builds.get(jobs[0].build_id)
    assert (first.log_id, first.date_finished, first.builder_id) == (
        aliases[2],
        now,
        builders[0].id,
    )
    files = await store.db.query(
        "SELECT filename, libraryfile FROM buildfile WHERE build = %s ORDER BY filename",
        (jobs[0].build_id,),
    )
    assert files == [("e-src0.changes", aliases[1]), ("e-src0.deb", aliases[0])]
    kept = await store.db.query(
        "SELECT id FROM libraryfilealias WHERE id = ANY(%s) AND expires IS NULL", (aliases,)
    )
    assert sorted(r[0] for r in kept) == sorted(aliases)
    assert (await store.builds.get(jobs[2].build_id)).dependencies == "libfoo (>= 2)"
    assert (await store.builds.get(jobs[5].build_id)).failure_reason == "no chroot"
    # a builder that carried a build to its end works: its failures are forgiven
    counts = [(await store.builders.get(b)).failure_count for b in builders]
    assert counts == [0, 0, 0, 2, 2, 0]
    waiting = {r[0] for r in await store.db.query("SELECT id FROM buildqueue")}
    assert {j.id for j in jobs} & waiting == {jobs[3].id, jobs[4].id}
    events = await store.db.query(
        "SELECT build, message FROM event WHERE kind = 'finished' AND build = ANY(%s)",
        ([j.build_id for j in jobs],),
    )
    assert sorted(events) == sorted(
        [
            (jobs[0].build_id, "BUILDING -> FULLYBUILT on e0"),
            (jobs[1].build_id, "BUILDING -> FAILEDTOBUILD on e1"),
            (jobs[2].build_id, "BUILDING -> MANUALDEPWAIT on e2"),
            (jobs[5].build_id, "BUILDING -> CHROOTWAIT on e5: no chroot"),
        ]
    )
