"""The dispatch order's forecast (buildmaster/dispatchorder.py) is the order the rules
(buildmaster/fairshare.py's choose, applied again and again) give, and the order in which
the claim's SQL, against real PostgreSQL, hands the jobs to builders."""

from __future__ import annotations

import random
from typing import Any

import pytest
import pytest_twisted
from share_support import set_share_usage
from twisted.internet import defer

from buildmaster.dispatchorder import dispatch_order
from buildmaster.fairshare import FairShareConfig, Waiting, choose
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store
from buildmaster.store.views import order


def chosen_one_by_one(
    jobs: list[Waiting],
    seconds: dict[int, float],
    usage: dict[Any, float],
    now: float,
    config: FairShareConfig,
) -> list[int]:
    """The rules as the claim applies them: choose, charge the estimate, again."""
    left, used, order = list(jobs), dict(usage), []
    while left:
        choice = choose(left, used, now, config)
        assert choice is not None
        order.append(choice.job.id)
        used[choice.job.owner] = used.get(choice.job.owner, 0.0) + seconds[choice.job.id]
        left.remove(choice.job)
    return order


@pytest.mark.parametrize("seed", range(40))
def test_the_forecast_is_the_rules_applied_again_and_again(seed: int) -> None:
    """Random queues: up to eight owners of several weights (or one), earlier usage (often
    equal: ties go to the smaller owner), scores and estimates that tie, some jobs aged.
    Usages and estimates are whole or half seconds: added up in any order they are exact,
    so owners whose deficits tie do so in both (with other fractions, a tie in real numbers
    may be broken either way by the rounding of each one's sums)."""
    rng = random.Random(seed)
    for _ in range(10):
        owners = list(range(rng.randint(1, 8)))
        weights = {o: rng.choice([0.5, 2.0, 3.0]) for o in owners if rng.random() < 0.4}
        config = FairShareConfig(half_life=600, aging_bound=4000, aging_slack=500, weights=weights)
        now = 1_000_000.0
        jobs = [
            Waiting(
                i,
                rng.choice(owners),
                rng.choice([100, 500, 900]),
                now - rng.choice([10, 100, 200, 3600, 3500]) - (4000 * (rng.random() < 0.1)),
            )
            for i in rng.sample(range(1000), rng.randint(0, 60))
        ]
        seconds = {j.id: float(rng.choice([60, 300, 1200])) for j in jobs}
        # (halves: sums are exact, so a tie is a tie for both, whatever the order of the sums)
        usage = {o: rng.choice([0.0, 0.0, 300.0, 2000.0, 1234.5]) for o in owners}
        order, aged = dispatch_order(jobs, seconds, usage, now, config)
        assert [j.id for j in order] == chosen_one_by_one(jobs, seconds, usage, now, config)
        assert aged == sum(1 for j in jobs if now - j.queued_at >= config.aging_after)


def test_an_owner_who_used_more_goes_after_and_an_aged_job_first() -> None:
    """What an operator reads in the listing: ann used builders lately, bob did not: bob's
    job goes first though its score is lower; then ann's, taking turns as the charges add
    up; an aged job before them all."""
    config = FairShareConfig(aging_bound=4000, aging_slack=500)
    now = 10_000.0
    ann = [Waiting(1, "ann", 900, now - 10), Waiting(2, "ann", 800, now - 10)]
    bob = [Waiting(3, "bob", 100, now - 10), Waiting(4, "bob", 50, now - 10)]
    old = Waiting(5, "ann", 0, now - 3600)
    seconds = dict.fromkeys(range(1, 6), 300.0)
    order, aged = dispatch_order(
        [*ann, *bob, old], seconds, {"ann": 5000.0, "bob": 0.0}, now, config
    )
    # aged 5 (ann: 5300 used), bob's 3 (300) and 4 (600); then ann's by score
    assert [j.id for j in order] == [5, 3, 4, 1, 2] and aged == 1
    by_score = sorted([*ann, *bob, old], key=lambda j: (-j.score, j.id))
    assert [j.id for j in by_score] == [1, 2, 3, 4, 5]


async def queue_jobs(store: Store, data: Any, n: int) -> list[int]:
    from buildmaster.enums import PackagePublishingPocket

    ids = []
    for i in range(n):
        spr = await store.sources.new(f"order{i}", "1", data.hoary)
        build = await store.builds.createBuild(
            spr, data.hoary_i386, PackagePublishingPocket.RELEASE, data.primary
        )
        ids.append((await store.queue.createBuildQueueEntry(build)).id)
    return ids


@pytest_twisted.ensureDeferred
async def test_builders_claim_the_jobs_in_the_forecast_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three owners (one of weight 3, one with earlier usage), mixed scores and estimates, two
    jobs aged: the forecast read from the database lists the jobs in the very order in which
    builders then claim them, one after the other (the claim's SQL, migration 0008). The
    reading is made as on a large queue: the jobs fetched a few at a time, the turns taken
    a few per slice."""
    monkeypatch.setattr(order, "CHUNK_JOBS", 7)
    monkeypatch.setattr(order, "_STEP_JOBS", 3)
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    people = [(await store.persons.new(n, n.title())).id for n in ("ann", "bob", "cat")]
    jobs = await queue_jobs(store, data, 30)
    rng = random.Random(25)
    for n, job_id in enumerate(jobs):
        await store.db.execute(
            "UPDATE buildqueue SET shareowner = %s, lastscore = %s,"
            " estimated_duration = make_interval(secs => %s),"
            " datecreated = now() - make_interval(secs => %s) WHERE id = %s",
            (
                rng.choice(people),
                rng.choice([100, 500, 900]),
                round(rng.uniform(30, 3000), 3),  # no two charges tie
                rng.uniform(10, 200) + (5000 if n in (7, 19) else 0),
                job_id,
            ),
        )
    # no decay worth the name while the claims run: the forecast assumes none
    await store.db.execute(
        "UPDATE fairshare SET half_life = 1e9, aging_bound = 4000, aging_slack = 500"
    )
    await store.db.execute("INSERT INTO shareweight VALUES (%s, 3)", (people[1],))
    await set_share_usage(store, people[0], 4321.5)
    by_score = [
        r[0]
        for r in await store.db.query(
            "SELECT id FROM buildqueue WHERE status = 0 ORDER BY lastscore DESC, id"
        )
    ]
    forecast = await store.views.queue.orders.forecast()
    kind = forecast.kind(data.processor_386.id, False)
    assert kind is not None and len(kind) == 30 and kind.aged == 2
    claimed = []
    for i in range(30):
        builder = await store.builders.new(f"ob{i}", f"http://ob{i}:8221/", [data.processor_386])
        job = await store.jobs.claim_next(builder)
        assert job is not None
        claimed.append(job.id)
    assert claimed == list(kind.job_ids)
    assert claimed != by_score  # (the queue is one where the rules are not the score)


@pytest_twisted.ensureDeferred
async def test_the_master_goes_on_with_other_work_while_a_reading_is_made(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ordering of a reading is made in steps between which the reactor runs other work:
    here every job is a step of its own, and a call the reactor keeps getting runs again
    and again while the jobs are ordered (were the ordering one block of work, it would
    run once or twice)."""
    monkeypatch.setattr(order, "_STEP_JOBS", 1)
    monkeypatch.setattr(order, "SLICE_SECONDS", 0.0)
    data = await load_sample_data(store)
    await queue_jobs(store, data, 30)
    orders = store.views.queue.orders
    reactor = store.db.clock  # the reactor
    reading = await orders.read_queue()
    ordering = defer.Deferred.fromCoroutine(orders.order(reading))
    turns = []

    def other_work() -> None:
        if not ordering.called:
            turns.append(1)
            reactor.callLater(0, other_work)

    reactor.callLater(0, other_work)
    kinds = await ordering
    kind = kinds[(data.processor_386.id, False)]
    assert len(kind) >= 30
    assert len(turns) >= 30


def test_a_listing_of_several_kinds_takes_one_of_each_in_turn() -> None:
    """The listing of several kinds (the first of each kind, then the second of each...) is
    computed from the kinds' lengths: every page and every job's place is the one of the
    list written out in full, whatever the lengths (a kind ran out, an empty one)."""
    rng = random.Random(7)
    for _ in range(50):
        kinds = []
        for k in range(rng.randint(1, 5)):
            kind = order.KindOrder(k, False)
            for _ in range(rng.choice([0, 1, 3, rng.randint(0, 40)])):
                job = rng.randrange(10**9)
                if kind.position(job) is None:
                    kind._take(job, job + 1, 60.0)
            kinds.append(kind)
        written = [
            (kind, i) for i in range(max(len(k) for k in kinds)) for kind in kinds if i < len(kind)
        ]
        listing = order.Listing(kinds)
        assert len(listing) == len(written)
        for start in range(len(written) + 2):
            limit = rng.randint(1, 10)
            assert listing.slice(start, limit) == written[start : start + limit]
        for place, (kind, i) in enumerate(written):
            assert listing.place(kind.job_ids[i]) == place
        assert listing.place(-1) is None
