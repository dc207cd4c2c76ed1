"""The farm's per-minute counts: written by the sampler, read by the pages' picture."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import task

from buildmaster.enums import BuildStatus
from buildmaster.web.samples import FarmSampler


@pytest_twisted.ensureDeferred
async def test_the_sampler_counts_finished_builds_and_the_queue_every_minute(
    make_world: Any,
) -> None:
    world = await make_world()
    store = world.store
    finished = [await world.queue(f"done{i}") for i in range(3)]
    waiting = [await world.queue(f"wait{i}") for i in range(2)]
    ids = [b.id for b in finished]
    await store.db.execute("DELETE FROM buildqueue WHERE build = ANY(%s)", (ids,))
    await store.db.execute(
        "UPDATE build SET buildstate = %s WHERE id = ANY(%s)", (int(BuildStatus.FULLYBUILT), ids)
    )
    # two finished in the last whole minute, one the minute before
    await store.db.execute(
        "UPDATE build SET date_finished = date_trunc('minute', now()) - interval '50 seconds'"
        " WHERE id = ANY(%s)",
        ([finished[0].id, finished[1].id],),
    )
    await store.db.execute(
        "UPDATE build SET date_finished = date_trunc('minute', now()) - interval '70 seconds'"
        " WHERE id = %s",
        (finished[2].id,),
    )
    clock = task.Clock()
    sampler = FarmSampler(clock, store.db, interval=60.0)
    sampler.startService()  # samples at once
    await sampler.stopService()
    history = await store.views.samples.history(hours=1)
    by_age = sorted(history.samples, key=lambda s: s.minute, reverse=True)
    assert [s.finished for s in by_age] == [2, 1]
    # the waiting builds, none running
    assert [(s.waiting, s.running) for s in by_age] == [(len(waiting), 0)] * 2
    assert by_age[0].minute < history.until and history.since < by_age[1].minute
    # a sample of a minute already written keeps its queue depth, recounts what finished
    await world.queue("later")
    await FarmSampler(clock, store.db).sample()
    again = await store.views.samples.history(hours=1)
    before = {s.minute: (s.finished, s.waiting) for s in by_age}
    after = {s.minute: (s.finished, s.waiting) for s in again.samples}
    assert {m: after[m] for m in before} == before  # the minute may have turned meanwhile
    # samples older than two days are pruned
    await store.db.execute("INSERT INTO farm_sample VALUES (now() - interval '3 days', 5, 5, 5)")
    await FarmSampler(clock, store.db).sample()
    old = "SELECT count(*) FROM farm_sample WHERE minute < now() - interval '1 day'"
    assert (await store.db.query(old))[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_the_api_and_the_pages_show_the_same_samples(api_world: Any) -> None:
    store, anonymous = api_world.store, api_world.anonymous
    await store.db.execute(
        "INSERT INTO farm_sample SELECT date_trunc('minute', now()) - i * interval '1 minute',"
        " i, 10 * i, 1 FROM generate_series(1, 3) i"
    )
    await store.db.execute(
        "INSERT INTO farm_sample VALUES (date_trunc('minute', now()) - interval '7 hours', 9, 9, 9)"
    )
    history = (await anonymous.get("/api/v1/queue/history")).json
    assert [(s["finished"], s["waiting"]) for s in history["samples"]] == [
        (3, 30),
        (2, 20),
        (1, 10),
    ]
    assert len((await anonymous.get("/api/v1/queue/history?hours=8")).json["samples"]) == 4
    assert (await anonymous.get("/api/v1/queue/history?hours=0")).status == 400
    page = (await anonymous.get("/builders")).body.decode()
    assert page.count('class="bar"') == 3
    assert "6 in 6.0 h" in page and "(now 10)" in page
