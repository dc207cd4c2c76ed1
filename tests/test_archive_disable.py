"""Disabling and enabling an archive (PATCH /api/v1/archives/<reference>): its waiting
builds are suspended, for the archive, and go back in the queue when it is enabled; a build
already on a builder goes on to its end; nothing else puts a disabled archive's build back
in the queue (a chroot's arrival, the end of a wait for the master's side, a retry, a
builder giving it back, a claim released). Real PostgreSQL, the API over real HTTP,
simulated builders."""

from __future__ import annotations

import datetime
from typing import Any

import pytest_twisted
from test_api_basics import assert_problem
from test_api_builders import _state
from test_fair_claims import bookkeeping_is_true
from twisted.internet import task

from buildmaster.enums import (
    ArchivePurpose,
    BuildQueueStatus,
    BuildStatus,
    PackagePublishingPocket,
)
from buildmaster.model import Archive, Build, BuildQueue
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store
from buildmaster.store.archives import disabled_reason, disabled_reason_sql
from buildmaster.testing import wait_for

ENABLE_HINT = 'PATCH /api/v1/archives/ubuntu {"enabled": true}'


async def _job(store: Store, build: Build | int) -> BuildQueue:
    build_id = build if isinstance(build, int) else build.id
    return await store.queue.get(await _job_id(store, build_id))


async def _job_id(store: Store, build_id: int) -> int:
    rows = await store.db.query("SELECT id FROM buildqueue WHERE build = %s", (build_id,))
    assert rows, f"build {build_id} has no job"
    return int(rows[0][0])


async def _suspension(store: Store, build_id: int) -> tuple[BuildQueueStatus, str | None, Any]:
    rows = await store.db.query(
        "SELECT status, suspended_reason, resume_after FROM buildqueue WHERE build = %s",
        (build_id,),
    )
    return BuildQueueStatus(rows[0][0]), rows[0][1], rows[0][2]


async def _events(store: Store, build_id: int) -> list[tuple[str, str]]:
    return [(e.kind, e.message) for e in await store.events.for_build(build_id)]


@pytest_twisted.ensureDeferred
async def test_a_disabled_archive_builds_nothing_new_and_enabled_again_it_builds(
    api_world: Any,
) -> None:
    """The primary archive is disabled while one of its builds runs: that build goes on to
    its end, the waiting one is suspended (GET says why and how to enable the archive) and
    the builder, free again, does not take it; cprov's PPA's build still waits. Enabled,
    the archive's build goes back in the queue and is built."""
    world, admin, anonymous, store = (
        api_world.world,
        api_world.admin,
        api_world.anonymous,
        api_world.store,
    )
    reactor = api_world.reactor
    clock = task.Clock()  # the builders' time: a build ends when the test says
    clock.advance(reactor.seconds())
    world.harness.farm.clock = clock
    world.harness.farm.build_time = 10.0
    await world.builder("t1")
    running = await world.queue("running")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(reactor, lambda: _state(store, running.id, "BUILDING"), 60, "dispatch")
    waiting = await world.queue("waiting")
    other = await world.queue("other", ppa=True)

    answer = await admin.patch("/api/v1/archives/ubuntu", {"enabled": False})
    assert answer.status == 200, answer.body
    assert answer.json["reference"] == "ubuntu" and answer.json["enabled"] is False
    assert (await anonymous.get("/api/v1/archives/ubuntu")).json["enabled"] is False
    shown = (await admin.get(f"/api/v1/builds/{waiting.id}")).json
    assert shown["state"] == "NEEDSBUILD" and shown["queue_status"] == "suspended"
    reason = shown["waiting"]["reason"]
    assert reason["code"] == "archive-disabled"
    assert "its archive ubuntu is disabled" in reason["text"] and ENABLE_HINT in reason["text"]
    assert shown["events"][-1]["kind"] == "suspended"
    assert shown["events"][-1]["message"] == "the archive ubuntu is disabled"
    assert (await admin.get(f"/api/v1/builds/{other.id}")).json["queue_status"] == "waiting"
    assert (await admin.get(f"/api/v1/builds/{running.id}")).json["state"] == "BUILDING"
    await bookkeeping_is_true(store)

    # the running build ends; the builder is free and scanned: it takes nothing
    clock.advance(10.0)
    await wait_for(reactor, lambda: _state(store, running.id, "FULLYBUILT"), 60, "the end")
    t1 = await store.builders.getByName("t1")
    await wait_for(
        reactor,
        lambda: _no_job_for(store, t1.id),
        60,
        "t1 free",
    )
    await master.scan_all()
    await master.scan_all()
    assert await _suspension(store, waiting.id) == (
        BuildQueueStatus.SUSPENDED,
        "the archive ubuntu is disabled",
        None,
    )
    assert (await store.builds.get(waiting.id)).status is BuildStatus.NEEDSBUILD
    assert await store.jobs.claim_next(t1) is None

    answer = await admin.patch("/api/v1/archives/ubuntu", {"enabled": True})
    assert answer.status == 200 and answer.json["enabled"] is True
    await wait_for(reactor, lambda: _state(store, waiting.id, "BUILDING"), 60, "dispatch")
    kinds = [kind for kind, _ in await _events(store, waiting.id)]
    assert kinds[-3:] == ["suspended", "resumed", "dispatched"]
    clock.advance(10.0)
    await wait_for(reactor, lambda: _state(store, waiting.id, "FULLYBUILT"), 60, "the end")
    await bookkeeping_is_true(store)


async def _no_job_for(store: Store, builder_id: int) -> bool:
    rows = await store.db.query("SELECT 1 FROM buildqueue WHERE builder = %s", (builder_id,))
    return not rows


@pytest_twisted.ensureDeferred
async def test_an_enabled_archive_build_without_chroot_is_suspended_again_when_tried(
    api_world: Any,
) -> None:
    """A build of a disabled archive whose architecture lost its chroot goes back in the
    queue when the archive is enabled, and the dispatcher suspends it again for the chroot
    (as it does a new build); the chroot back, it is built."""
    world, admin, store = api_world.world, api_world.admin, api_world.store
    reactor = api_world.reactor
    build = await world.queue("hello")
    await admin.patch("/api/v1/archives/ubuntu", {"enabled": False})
    das = world.data.hoary_i386
    chroot = (await store.db.query("SELECT chroot FROM distroarchseries WHERE id = %s", (das.id,)))[
        0
    ][0]
    await store.db.execute("UPDATE distroarchseries SET chroot = NULL WHERE id = %s", (das.id,))
    reason = (await admin.get(f"/api/v1/builds/{build.id}")).json["waiting"]["reason"]
    assert reason["code"] == "archive-disabled"
    assert "PUT /api/v1/chroots/ubuntu/hoary/i386" in reason["text"]
    await world.builder("t1")
    await admin.patch("/api/v1/archives/ubuntu", {"enabled": True})
    assert (await _suspension(store, build.id))[0] is BuildQueueStatus.WAITING
    master = world.harness.master
    master.startService()
    await master.when_ready()

    async def suspended_for_the_chroot() -> bool:
        status, why, _ = await _suspension(store, build.id)
        return status is BuildQueueStatus.SUSPENDED and "no chroot" in (why or "")

    await wait_for(reactor, suspended_for_the_chroot, 60, "suspended for its chroot")
    await store.distributions.addOrUpdateChroot(das, chroot)
    assert await store.jobs.resume_suspended(das) == 1
    await wait_for(reactor, lambda: _state(store, build.id, "FULLYBUILT"), 60, "built")


@pytest_twisted.ensureDeferred
async def test_only_an_admin_disables_an_archive_that_exists_with_a_body_that_says_how(
    api_world: Any,
) -> None:
    world, admin, anonymous = api_world.world, api_world.admin, api_world.anonymous
    uploader = await api_world.uploader(world.data.cprov_ppa)
    path = "/api/v1/archives/~cprov/ubuntu/ppa"
    assert_problem(await anonymous.patch(path, {"enabled": False}), 401, "unauthenticated")
    assert_problem(await uploader.patch(path, {"enabled": False}), 403, "forbidden", "admin token")
    assert_problem(
        await admin.patch("/api/v1/archives/~nobody/ubuntu/ppa", {"enabled": False}),
        404,
        "not-found",
        "~nobody/ubuntu/ppa",
    )
    assert_problem(
        await admin.patch("/api/v1/archives/~nobody", {"enabled": False}),
        404,
        "not-found",
    )
    for body in ({}, {"enabled": "no"}, {"enabled": False, "private": True}, [False]):
        assert_problem(await admin.patch(path, body), 400, "invalid-body", "ArchiveUpdate")
    assert (await anonymous.get(path)).json["enabled"] is True
    done = await admin.patch("/api/v1/archives/ppa:cprov/ppa", {"enabled": False})
    assert done.status == 200 and done.json["reference"] == "~cprov/ubuntu/ppa"
    assert done.json["enabled"] is False
    assert (await anonymous.get(path)).json["enabled"] is False


@pytest_twisted.ensureDeferred
async def test_nothing_puts_a_disabled_archives_job_back_in_the_queue(store: Store) -> None:
    """cprov's PPA is disabled: a chroot's arrival, the end of a wait for the master's
    side, a retry, a builder giving a job back and a released claim all leave its jobs
    suspended for the archive; a builder's claim takes another PPA's job, not its. The
    fair-share counts stay true throughout. Enabled, its jobs wait again and are claimed."""
    data = await load_sample_data(store)
    for job_id in (data.lost_job_id, data.waiting_job_id):
        await store.queue.destroySelf(job_id)
    ppa = data.cprov_ppa
    other_owner = await store.persons.new("other", "Other")
    other = await store.archives.new(other_owner, data.hoary.distribution_id, ArchivePurpose.PPA)
    das = data.hoary_i386

    async def queue(name: str, archive: Archive) -> Build:
        spr = await store.sources.new(name, "1.0", data.hoary)
        build = await store.builds.createBuild(spr, das, PackagePublishingPocket.RELEASE, archive)
        await store.queue.createBuildQueueEntry(build)
        return build

    builders = [
        await store.builders.new(f"v{i}", f"http://v{i}:8221/", [data.processor_386], True)
        for i in range(3)
    ]
    no_chroot, master_side, waiting, given_back, released, failed = [
        await queue(name, ppa)
        for name in ("no-chroot", "master-side", "waiting", "given-back", "released", "failed")
    ]
    elsewhere = await queue("elsewhere", other)
    now = datetime.datetime.now(datetime.UTC)
    await store.jobs.suspend(await _job(store, no_chroot), None, "not dispatched: no chroot")
    await store.jobs.suspend(
        await _job(store, master_side), None, "waiting: the librarian", resume_after=now
    )
    await store.jobs.cancel(failed)
    # two of its jobs on builders (claimed) before it is disabled
    await store.jobs.claim(await _job(store, given_back), builders[0])
    await store.jobs.claim(await _job(store, released), builders[1])
    await bookkeeping_is_true(store)

    reason = disabled_reason(ppa)
    assert reason == "the archive ~cprov/ubuntu/ppa is disabled"
    assert not (await store.archives.set_enabled(ppa, False)).enabled
    assert await _suspension(store, waiting.id) == (BuildQueueStatus.SUSPENDED, reason, None)
    assert (await _events(store, waiting.id))[-1] == ("suspended", reason)
    for build in (given_back, released):  # on builders: they go on
        assert (await _suspension(store, build.id))[0] is BuildQueueStatus.RUNNING
    assert (await _suspension(store, elsewhere.id))[0] is BuildQueueStatus.WAITING
    await bookkeeping_is_true(store)

    # the master's side's wait is over: the job stays suspended, now for the archive (and
    # no time to come back); the one waiting for a chroot is left as it is
    assert await store.jobs.resume_due(now + datetime.timedelta(seconds=1)) == 0
    assert await _suspension(store, master_side.id) == (BuildQueueStatus.SUSPENDED, reason, None)
    assert (await _events(store, master_side.id))[-1] == ("suspended", reason)
    assert (await _suspension(store, no_chroot.id))[1] == "not dispatched: no chroot"
    # the chroot arrives: the same
    assert await store.jobs.resume_suspended(das) == 0
    assert await _suspension(store, no_chroot.id) == (BuildQueueStatus.SUSPENDED, reason, None)
    assert (await _events(store, no_chroot.id))[-1] == ("suspended", reason)
    # once is enough: a second arrival changes nothing and says nothing
    count = len(await _events(store, no_chroot.id))
    assert await store.jobs.resume_suspended(das) == 0
    assert len(await _events(store, no_chroot.id)) == count
    # a retry
    retried = await store.jobs.retry(failed)
    assert retried.status is BuildQueueStatus.SUSPENDED
    assert await _suspension(store, failed.id) == (BuildQueueStatus.SUSPENDED, reason, None)
    assert [k for k, _ in await _events(store, failed.id)][-2:] == ["queued", "suspended"]
    # a builder gives its job back; a claim that never reached its builder is released
    assert await store.jobs.requeue(await _job(store, given_back), builders[0], "given back")
    assert await store.jobs.release_claim(await _job(store, released), builders[1], "stopped")
    for build in (given_back, released):
        assert await _suspension(store, build.id) == (BuildQueueStatus.SUSPENDED, reason, None)
        assert (await _events(store, build.id))[-1] == ("suspended", reason)
    await bookkeeping_is_true(store)
    # a builder's claim: the other PPA's job, then nothing
    claimed = await store.jobs.claim_next(builders[2])
    assert claimed is not None and claimed.build_id == elsewhere.id
    await store.jobs.requeue(claimed, builders[2], "back")
    for builder in builders:
        builder = await store.builders.get(builder.id)
        job = await store.jobs.claim_next(builder)
        assert job is not None and job.build_id == elsewhere.id
        await store.jobs.release_claim(job, builder, "not this one")
    # (a disabled archive's job claimed anyway is suspended by the dispatcher: below)

    # enabled: every job suspended without a time to come back waits again
    assert (await store.archives.set_enabled(ppa, True)).enabled
    ours = [no_chroot, master_side, waiting, given_back, released, failed]
    for build in ours:
        assert await _suspension(store, build.id) == (BuildQueueStatus.WAITING, None, None)
        assert (await _events(store, build.id))[-1][0] == "resumed"
    await bookkeeping_is_true(store)
    # enabling an enabled archive leaves its suspended jobs alone
    await store.jobs.suspend(await _job(store, waiting), None, "not dispatched: no chroot")
    await store.archives.set_enabled(ppa, True)
    assert (await _suspension(store, waiting.id))[0] is BuildQueueStatus.SUSPENDED
    await store.jobs.cancel(elsewhere)
    job = await store.jobs.claim_next(await store.builders.get(builders[0].id))
    assert job is not None and job.build_id in {b.id for b in ours}
    await bookkeeping_is_true(store)


@pytest_twisted.ensureDeferred
async def test_the_dispatcher_suspends_a_disabled_archives_job_it_claimed(
    api_world: Any,
) -> None:
    """A job of a disabled archive that waits (it came back to the queue at the moment its
    archive was disabled: made here by disabling the archive behind the store's back) is
    claimed by a builder but not sent to it: the dispatcher suspends it for its archive."""
    world, admin, store = api_world.world, api_world.admin, api_world.store
    reactor = api_world.reactor
    build = await world.queue("hello")
    await world.builder("t1")
    await store.db.execute(
        "UPDATE archive SET enabled = false WHERE id = %s", (world.data.primary.id,)
    )
    reason = (await admin.get(f"/api/v1/builds/{build.id}")).json["waiting"]["reason"]
    assert reason["code"] == "archive-disabled"
    assert reason["text"].startswith("to be suspended when a builder tries it: its archive ubuntu")
    master = world.harness.master
    master.startService()
    await master.when_ready()

    async def suspended() -> bool:
        return (await _suspension(store, build.id))[0] is BuildQueueStatus.SUSPENDED

    await wait_for(reactor, suspended, 60, "suspended")
    assert await _suspension(store, build.id) == (
        BuildQueueStatus.SUSPENDED,
        "the archive ubuntu is disabled",
        None,
    )
    assert "dispatched" not in [k for k, _ in await _events(store, build.id)]
    assert (await store.builds.get(build.id)).status is BuildStatus.NEEDSBUILD
    shown = (await admin.get(f"/api/v1/builds/{build.id}")).json["waiting"]["reason"]
    assert shown["code"] == "archive-disabled" and shown["text"].startswith("suspended: ")
    await bookkeeping_is_true(store)


@pytest_twisted.ensureDeferred
async def test_the_reason_in_sql_is_the_reason_in_python(store: Store) -> None:
    data = await load_sample_data(store)
    partner = await store.archives.new(
        data.ubuntu_team, data.hoary.distribution_id, ArchivePurpose.PARTNER
    )
    for archive in (data.primary, data.cprov_ppa, partner):
        rows = await store.db.query(
            f"SELECT {disabled_reason_sql()} FROM archive a JOIN person p ON p.id = a.owner"
            " JOIN distribution d ON d.id = a.distribution WHERE a.id = %s",
            (archive.id,),
        )
        assert rows[0][0] == disabled_reason(archive)
    assert disabled_reason(partner) == "the archive ubuntu/partner is disabled"
