"""Builds and the queue through the operator API: listing, filters and pages, one build in
full (where it waits and why), its log, and the operations on it."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from share_support import set_share_usage
from test_api_basics import assert_problem
from test_api_builders import _state
from twisted.internet import defer, task

from buildmaster.enums import BuildStatus
from buildmaster.testing import wait_for


@pytest_twisted.ensureDeferred
async def test_builds_are_listed_newest_first_filtered_and_paged(api_world: Any) -> None:
    world, anonymous = api_world.world, api_world.anonymous
    builds = [await world.queue(f"pkg{i}") for i in range(5)]
    ppa = await world.queue("ppapkg", ppa=True)
    await api_world.store.builds.set_status(builds[0], BuildStatus.FAILEDTOBUILD, "broken")
    ids = lambda answer: [b["id"] for b in answer.json["builds"]]  # noqa: E731
    every = await anonymous.get("/api/v1/builds")
    sample = [2, 1]  # the sample data's two builds (no longer queued)
    assert ids(every) == [ppa.id] + [b.id for b in reversed(builds)] + sample
    first = every.json["builds"][1]
    assert first["title"] == "pkg4 1.0 on i386" and first["state"] == "NEEDSBUILD"
    assert first["queue_status"] == "waiting" and first["score"] > 0
    assert first["archive"] == {"reference": "ubuntu", "private": False}
    page = await anonymous.get("/api/v1/builds?limit=2")
    assert ids(page) == [ppa.id, builds[4].id]
    following = await anonymous.get(page.json["next"])
    assert ids(following) == [builds[3].id, builds[2].id]
    assert ids(await anonymous.get("/api/v1/builds?state=failedtobuild")) == [builds[0].id]
    assert (
        ids(await anonymous.get("/api/v1/builds?state=failedtobuild,needsbuild&limit=100"))
        == ids(every)[:-1]
    )
    assert ids(await anonymous.get("/api/v1/builds?archive=ppa:cprov/ppa")) == [ppa.id]
    assert ids(await anonymous.get("/api/v1/builds?archive=~cprov/ubuntu/ppa")) == [ppa.id]
    assert ids(await anonymous.get("/api/v1/builds?source=pkg2")) == [builds[2].id]
    assert ids(await anonymous.get("/api/v1/builds?arch=amd64")) == []
    assert ids(await anonymous.get("/api/v1/builds?finished_after=2000-01-01T00:00:00Z")) == [
        builds[0].id
    ]
    assert ids(await anonymous.get("/api/v1/builds?created_before=2000-01-01T00:00:00Z")) == []
    assert_problem(
        await anonymous.get("/api/v1/builds?archive=~nobody/ubuntu/ppa"),
        400,
        "invalid-parameter",
        "no archive ~nobody/ubuntu/ppa",
    )
    assert_problem(
        await anonymous.get("/api/v1/builds?builder=nobody"), 400, "invalid-parameter", "nobody"
    )
    assert_problem(
        await anonymous.get("/api/v1/builds?created_after=yesterday"),
        400,
        "invalid-parameter",
        "RFC 3339",
    )


@pytest_twisted.ensureDeferred
async def test_a_waiting_build_says_where_it_stands_and_why(api_world: Any) -> None:
    world, admin, anonymous, store = (
        api_world.world,
        api_world.admin,
        api_world.anonymous,
        api_world.store,
    )
    first = await world.queue("first")
    second = await world.queue("second")
    shown = (await anonymous.get(f"/api/v1/builds/{second.id}")).json
    assert shown["cookie"] == f"PACKAGEBUILD-{second.id}"
    assert sum(p["points"] for p in shown["score_parts"]) == shown["score"]
    assert {p["reason"] for p in shown["score_parts"]} >= {"pocket release", "component main"}
    assert [e["kind"] for e in shown["events"]] == ["created", "queued"]
    waiting = shown["waiting"]
    assert waiting["position"] == 2 and waiting["reason"]["code"] == "no-builder"
    assert "POST /api/v1/builders" in waiting["reason"]["text"]
    assert waiting["estimated_start"] is None
    # a builder that is out of service: named, with its failnotes and since when
    sim, builder = await world.builder("t1")
    await store.jobs.fail_builder(builder, "(111, 'Connection refused')")
    reason = (await anonymous.get(f"/api/v1/builds/{first.id}")).json["waiting"]["reason"]
    assert reason["code"] == "no-working-builder"
    assert "t1 is failed: (111, 'Connection refused') since " in reason["text"]
    assert 'PATCH /api/v1/builders/t1 {"enabled": true}' in reason["text"]
    await admin.patch("/api/v1/builders/t1", {"enabled": True, "manual": True})
    reason = (await anonymous.get(f"/api/v1/builds/{first.id}")).json["waiting"]["reason"]
    assert reason["code"] == "manual" and '"manual": false' in reason["text"]
    await admin.patch("/api/v1/builders/t1", {"manual": False})
    standing = (await anonymous.get(f"/api/v1/builds/{second.id}")).json["waiting"]
    assert (
        standing["reason"]["code"] == "busy"
        and "1 build of its kind before it" in standing["reason"]["text"]
    )
    assert standing["estimated_start_in"] == 300.0  # the default estimate of the one before it
    nxt = (await anonymous.get(f"/api/v1/builds/{first.id}")).json["waiting"]
    assert nxt["reason"]["code"] == "next" and nxt["estimated_start_in"] == 0.0
    # no chroot: said so, and how to upload one
    await store.db.execute("UPDATE distroarchseries SET chroot = NULL")
    # (a token's reads are answered afresh: an anonymous one may be a second old)
    reason = (await admin.get(f"/api/v1/builds/{first.id}")).json["waiting"]["reason"]
    assert (
        reason["code"] == "no-chroot" and "PUT /api/v1/chroots/ubuntu/hoary/i386" in reason["text"]
    )


@pytest_twisted.ensureDeferred
async def test_the_queue_per_kind_and_its_jobs_in_dispatch_order(api_world: Any) -> None:
    world, admin, anonymous = api_world.world, api_world.admin, api_world.anonymous
    builds = [await world.queue(f"q{i}") for i in range(4)]
    ppa = await world.queue("qppa", ppa=True)
    await world.builder("t1")
    await admin.post(f"/api/v1/builds/{builds[2].id}/rescore", {"score": 99999})
    queue = (await anonymous.get("/api/v1/queue")).json
    kinds = {k["kind"]: k for k in queue["kinds"]}
    trusted = kinds["trusted 386"]
    assert trusted["waiting"] == 4 and trusted["usable_builders"] == 1
    assert trusted["oldest_wait_seconds"] >= 0
    assert trusted["estimated_drain_seconds"] == 3 * 300.0  # three before the last, one builder
    virtual = kinds["virtualized 386"]
    assert virtual["waiting"] == 1 and virtual["usable_builders"] == 0
    assert virtual["estimated_drain_seconds"] is None
    jobs = (await anonymous.get("/api/v1/queue/jobs?processor=386&virtualized=false&limit=2")).json
    assert [j["build"]["id"] for j in jobs["jobs"]] == [builds[2].id, builds[0].id]
    assert [j["position"] for j in jobs["jobs"]] == [1, 2]
    assert jobs["jobs"][0]["manual_score"] is True and jobs["jobs"][0]["score"] == 99999
    rest = (await anonymous.get(jobs["next"])).json
    assert [j["build"]["id"] for j in rest["jobs"]] == [builds[1].id, builds[3].id]
    assert [j["position"] for j in rest["jobs"]] == [3, 4]
    every = (await anonymous.get("/api/v1/queue/jobs")).json["jobs"]
    assert ppa.id in [j["build"]["id"] for j in every]
    assert_problem(
        await anonymous.get("/api/v1/queue/jobs?processor=sparc"), 400, "invalid-parameter", "sparc"
    )
    assert_problem(
        await anonymous.get("/api/v1/queue/jobs?after=x"), 400, "invalid-parameter", "COUNT:JOB"
    )
    assert_problem(
        await anonymous.get("/api/v1/queue/jobs?after=-1:2"), 400, "invalid-parameter", "COUNT:JOB"
    )


@pytest_twisted.ensureDeferred
async def test_the_queue_lists_jobs_in_the_order_builders_will_take_them(api_world: Any) -> None:
    """Two owners wait for trusted i386 builders: ubuntu-team used them much more lately, so
    cprov's job goes first though its score is lower; a job that has waited past the aging
    threshold goes before both. The listing is that order (not the scores'), and a waiting
    build's position and estimated start agree with it."""
    world, admin, anonymous, store = (
        api_world.world,
        api_world.admin,
        api_world.anonymous,
        api_world.store,
    )
    high = await world.queue("busy-high")
    low = await world.queue("busy-low")
    other = await world.queue("other-owner")
    old = await world.queue("waited-long")
    await world.builder("t1")  # (the master is not started: nothing is dispatched)
    for build, score in ((high, 900), (low, 800), (other, 100), (old, 50)):
        await store.db.execute(
            "UPDATE buildqueue SET lastscore = %s WHERE build = %s", (score, build.id)
        )
    cprov = world.data.cprov_ppa.owner_id
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s WHERE build = %s", (cprov, other.id)
    )
    await set_share_usage(store, world.data.primary.owner_id, 36000)
    await store.db.execute(
        "UPDATE buildqueue SET datecreated = now() - interval '4 hours' WHERE build = %s",
        (old.id,),
    )
    listed = (
        await anonymous.get("/api/v1/queue/jobs?processor=386&virtualized=false&limit=3")
    ).json
    first_page = listed["jobs"]
    rest = (await anonymous.get(listed["next"])).json["jobs"]
    order = [j["build"]["id"] for j in first_page + rest]
    assert order == [old.id, other.id, high.id, low.id]  # by score: high, low, other, old
    assert [j["position"] for j in first_page + rest] == [1, 2, 3, 4]
    assert [j["aged"] for j in first_page + rest] == [True, False, False, False]
    assert listed["as_of"] is not None
    # every kind: the same order (one kind waits here), positions within it
    every = (await anonymous.get("/api/v1/queue/jobs")).json["jobs"]
    assert [(j["build"]["id"], j["position"]) for j in every] == [
        (build_id, n + 1) for n, build_id in enumerate(order)
    ]
    for position, build_id in enumerate(order, 1):
        waiting = (await anonymous.get(f"/api/v1/builds/{build_id}")).json["waiting"]
        assert waiting["position"] == position and waiting["position_exact"] is True
        # one builder: the estimates of the builds before it (300 s each by default)
        assert waiting["estimated_start_in"] == 300.0 * (position - 1)
    # a rescore through the API is seen at once: low goes before high within its owner
    await admin.post(f"/api/v1/builds/{low.id}/rescore", {"score": 5000})
    again = (await anonymous.get("/api/v1/queue/jobs?processor=386&virtualized=false")).json
    assert [j["build"]["id"] for j in again["jobs"]] == [old.id, other.id, low.id, high.id]
    shown = (await anonymous.get(f"/api/v1/builds/{low.id}")).json["waiting"]
    assert shown["position"] == 3


@pytest_twisted.ensureDeferred
async def test_cancel_retry_and_rescore(api_world: Any) -> None:
    world, admin, store = api_world.world, api_world.admin, api_world.store
    build = await world.queue("hello")
    other = await world.queue("other", ppa=True)
    uploader = await api_world.uploader(world.data.cprov_ppa)
    assert_problem(
        await api_world.anonymous.post(f"/api/v1/builds/{build.id}/cancel"), 401, "unauthenticated"
    )
    assert_problem(
        await uploader.post(f"/api/v1/builds/{build.id}/cancel"), 403, "forbidden", "ubuntu"
    )
    assert_problem(
        await uploader.post(f"/api/v1/builds/{other.id}/rescore", {"score": 5}),
        403,
        "forbidden",
        "admin token",
    )
    assert_problem(
        await admin.post(f"/api/v1/builds/{build.id}/retry"),
        409,
        "conflict",
        "NEEDSBUILD: only builds that failed or were cancelled",
    )
    rescored = await admin.post(f"/api/v1/builds/{build.id}/rescore", {"score": -10})
    assert rescored.json["score"] == -10 and rescored.json["manual_score"] is True
    assert_problem(
        await admin.post(f"/api/v1/builds/{build.id}/rescore", {"score": "high"}),
        400,
        "invalid-body",
    )
    cancelled = await uploader.post(f"/api/v1/builds/{other.id}/cancel")
    assert cancelled.status == 200 and cancelled.json["state"] == "CANCELLED"
    assert_problem(
        await uploader.post(f"/api/v1/builds/{other.id}/cancel"),
        409,
        "conflict",
        "already ended CANCELLED",
    )
    assert_problem(
        await admin.post(f"/api/v1/builds/{other.id}/rescore", {"score": 1}),
        409,
        "conflict",
        "not waiting",
    )
    retried = await uploader.post(f"/api/v1/builds/{other.id}/retry")
    assert retried.status == 200 and retried.json["state"] == "NEEDSBUILD"
    assert retried.json["queue_status"] == "waiting"
    events = [e["kind"] for e in (await admin.get(f"/api/v1/builds/{other.id}")).json["events"]]
    assert events == ["created", "queued", "state", "state", "queued"]
    assert (await store.builds.get(other)).status is BuildStatus.NEEDSBUILD


@pytest_twisted.ensureDeferred
async def test_a_building_build_shows_its_live_log_tail_and_streams_it(api_world: Any) -> None:
    world, anonymous, store = api_world.world, api_world.anonymous, api_world.store
    # the builder's time is a Clock: its build ends once the stream has shown its tail,
    # however slowly a loaded machine gets there
    clock = task.Clock()
    clock.advance(api_world.reactor.seconds())
    world.harness.farm.clock = clock
    await world.builder("t1")
    world.harness.farm.build_time = 2.0
    build = await world.queue("hello")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(api_world.reactor, lambda: _state(store, build.id, "BUILDING"), 60, "dispatch")
    events: list[tuple[str, Any]] = []
    ended: list[bool] = []
    buffer = bytearray()

    def sink(data: bytes) -> None:
        buffer.extend(data)
        while b"\n\n" in buffer:
            block, _, rest = bytes(buffer).partition(b"\n\n")
            buffer[:] = rest
            lines = dict(
                line.split(": ", 1)
                for line in block.decode().splitlines()
                if not line.startswith(":")
            )
            if lines:
                events.append((lines["event"], json.loads(lines["data"])))
                if events[-1][0] == "logtail" and events[-1][1]["logtail"] and not ended:
                    ended.append(True)
                    clock.advance(2.0)  # the build's whole time

    streamed = await anonymous.http.request(
        b"GET",
        f"{api_world.harness.base_url}/api/v1/builds/{build.id}/log/stream",
        sink=sink,
        timeout=60,
    )
    assert streamed.status == 200
    assert streamed.headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "logtail" and kinds[-1] == "end" and kinds.count("end") == 1
    tails = [data["logtail"] for kind, data in events if kind == "logtail" and data["logtail"]]
    assert tails and f"PACKAGEBUILD-{build.id}" in "".join(tails)
    end = events[-1][1]
    assert end["state"] == "FULLYBUILT" and end["live"] is False
    assert end["log"]["filename"].startswith("buildlog_ubuntu-hoary-i386.hello_1.0_FULLYBUILT")
    log = (await anonymous.get(f"/api/v1/builds/{build.id}/log")).json
    assert log["state"] == "FULLYBUILT" and log["logtail"] is None
    assert log["log"]["sha256"] == end["log"]["sha256"]
    assert_problem(await anonymous.get("/api/v1/builds/99999/log/stream"), 404, "not-found")


@pytest_twisted.ensureDeferred
async def test_readers_of_the_queue_share_a_recent_reading(api_world: Any) -> None:
    """A reading of the queue is a walk through all of it: readers within max_age share
    one (it says when it was made); a reader asking for a fresh one gets it."""
    world, queue = api_world.world, api_world.store.views.queue
    await world.queue("first")
    first, second = await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(queue.kinds(max_age=60)),
            defer.Deferred.fromCoroutine(queue.kinds(max_age=60)),
        ]
    )
    assert first is second  # one statement for both
    await world.queue("second")
    assert await queue.kinds(max_age=60) is first
    fresh = await queue.kinds()
    assert [k.waiting for k in fresh if k.name == "trusted 386"] == [2]
    assert fresh[0].as_of >= first[0].as_of


@pytest_twisted.ensureDeferred
async def test_a_waiting_build_says_how_fair_shares_and_aging_place_it(api_world: Any) -> None:
    """Two owners' builds wait for the same kind of builder: the owner who used builders
    lately is behind (its deficit and rank), the other is next; a build that has waited past
    the aging threshold says it goes before fair shares."""
    world, admin, store = api_world.world, api_world.admin, api_world.store
    # (read with a token: answered afresh, not a second old as an anonymous read may be)
    first = await world.queue("busy-owner")
    second = await world.queue("idle-owner")
    cprov = world.data.cprov_ppa.owner_id
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s WHERE build = %s", (cprov, second.id)
    )
    await set_share_usage(store, world.data.primary.owner_id, 1800)
    behind = (await admin.get(f"/api/v1/builds/{first.id}")).json["waiting"]["share"]
    assert behind["owner"] == "ubuntu-team" and behind["owners_waiting"] == 2
    assert behind["usage_seconds"] > 1700 and behind["deficit"] < 0 < 1 < behind["owner_rank"]
    assert behind["aged"] is False and behind["aged_after_seconds"] == 12600.0
    assert "1 owner(s) ahead by fair share" in behind["text"]
    ahead = (await admin.get(f"/api/v1/builds/{second.id}")).json["waiting"]["share"]
    assert ahead["owner"] == "cprov" and ahead["owner_rank"] == 1 and ahead["deficit"] == 0.5
    assert "its owner's turn is next" in ahead["text"]
    assert behind["held_back"] is False and ahead["held_back"] is False
    # the reserve: two builders of the kind, one kept (reserve 0.5); the primary runs a
    # build on the other, its fair share of it, and is held back; cprov (under its share)
    # is not
    [(name,)] = await store.db.query(
        "SELECT p.name FROM buildqueue q JOIN processor p ON p.id = q.processor WHERE q.build = %s",
        (first.id,),
    )
    processor = await store.processors.getByName(name)
    busy, _ = [
        await store.builders.new(f"rsv{i}", f"http://rsv{i}:8221/", [processor]) for i in (1, 2)
    ]
    third = await world.queue("running-owner")
    [(third_job,)] = await store.db.query("SELECT id FROM buildqueue WHERE build = %s", (third.id,))
    await store.jobs.claim(third_job, busy)
    await store.db.execute("UPDATE fairshare SET reserve = 0.5")
    held = (await admin.get(f"/api/v1/builds/{first.id}")).json["waiting"]["share"]
    assert held["held_back"] is True, held["text"]
    assert [held[k] for k in ("running", "builders", "idle_builders", "reserve")] == [1, 2, 1, 1]
    assert held["share_builders"] == 0.5
    assert "Held back by the reserve: ubuntu-team runs 1 build(s) of this kind" in held["text"]
    free = (await admin.get(f"/api/v1/builds/{second.id}")).json["waiting"]["share"]
    assert free["held_back"] is False and free["running"] == 0
    await store.db.execute(
        "UPDATE buildqueue SET datecreated = now() - interval '4 hours' WHERE build = %s",
        (first.id,),
    )
    aged = (await admin.get(f"/api/v1/builds/{first.id}")).json["waiting"]["share"]
    assert aged["aged"] is True and aged["waited_seconds"] >= 14400
    assert aged["held_back"] is False  # an aged build goes first, reserve or not
    assert "Held back" not in aged["text"]
    assert "goes before fair shares, the longest waiting first" in aged["text"]
    # and the build's page says it in a sentence
    page = (await api_world.anonymous.get(f"/builds/{second.id}")).body.decode()
    assert "Whose turn: cprov (weight 1) used 0 builder-seconds lately" in page
