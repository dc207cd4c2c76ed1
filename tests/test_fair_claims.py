"""The claim with fair shares against real PostgreSQL: it chooses what the pure rules
(buildmaster/fairshare.py) choose on the same state, its bookkeeping stays true, and two
masters claiming at once never hand one job to two builders while sharing builders out."""

from __future__ import annotations

import collections
import datetime
import hashlib
import random
from typing import Any

import pytest
import pytest_twisted
from share_support import set_share_usage
from twisted.internet import defer

from buildmaster.enums import BuildStatus, PackagePublishingPocket
from buildmaster.fairshare import FairShareConfig, Waiting, choose, decayed
from buildmaster.model import Builder
from buildmaster.sampledata import SampleData, load_sample_data
from buildmaster.store import Database, Store


async def queue_jobs(store: Store, data: SampleData, prefix: str, n: int) -> list[int]:
    ids = []
    for i in range(n):
        spr = await store.sources.new(f"{prefix}{i}", "1", data.hoary)
        build = await store.builds.createBuild(
            spr, data.hoary_i386, PackagePublishingPocket.RELEASE, data.primary
        )
        ids.append((await store.queue.createBuildQueueEntry(build)).id)
    return ids


async def owners(store: Store, names: list[str]) -> list[int]:
    return [(await store.persons.new(name, name.title())).id for name in names]


async def builders(store: Store, data: SampleData, prefix: str, n: int) -> list[Builder]:
    return [
        await store.builders.new(f"{prefix}{i}", f"http://{prefix}{i}:8221/", [data.processor_386])
        for i in range(n)
    ]


async def bookkeeping_is_true(store: Store) -> None:
    """shareusage.waiting is what is really waiting, per kind and owner."""
    rows = await store.db.query(
        "SELECT coalesce(s.processor, q.processor), coalesce(s.virtualized, q.virtualized),"
        " coalesce(s.owner, q.owner), coalesce(s.waiting, 0), coalesce(q.n, 0)"
        " FROM shareusage s FULL JOIN (SELECT processor, virtualized, shareowner AS owner,"
        "  count(*) AS n FROM buildqueue WHERE status = 0 AND builder IS NULL GROUP BY 1, 2, 3) q"
        " ON (q.processor, q.virtualized, q.owner) = (s.processor, s.virtualized, s.owner)"
    )
    wrong = [r for r in rows if r[3] != r[4]]
    assert not wrong, wrong


async def rules_state(
    store: Store, processor: int
) -> tuple[list[Waiting], dict[int, float], float, FairShareConfig]:
    """The waiting jobs of (processor, trusted), each owner's decayed usage and the settings,
    read from the database as the pure rules take them."""
    [(now, half_life, bound, slack, default)] = await store.db.query(
        "SELECT extract(epoch FROM now()), half_life, aging_bound, aging_slack, default_weight"
        " FROM fairshare"
    )
    now = float(now)
    jobs = [
        Waiting(r[0], r[1], r[2], float(r[3]))
        for r in await store.db.query(
            "SELECT id, shareowner, lastscore, extract(epoch FROM datecreated) FROM buildqueue"
            " WHERE status = 0 AND builder IS NULL AND processor = %s AND NOT virtualized",
            (processor,),
        )
    ]
    usage: dict[int, float] = collections.defaultdict(float)
    for owner, value, stamp in await store.db.query(
        "SELECT owner, usage, extract(epoch FROM stamp) FROM shareusage"
        " WHERE processor = %s AND NOT virtualized",
        (processor,),
    ):
        usage[owner] += decayed(value, float(stamp), now, half_life)
    weights: dict[Any, float] = dict(await store.db.query("SELECT owner, weight FROM shareweight"))
    config = FairShareConfig(
        half_life=half_life,
        aging_bound=bound,
        aging_slack=slack,
        default_weight=default,
        weights=weights,
        affinity_window=0,
    )
    return jobs, usage, now, config


@pytest_twisted.ensureDeferred
async def test_the_claim_chooses_what_the_pure_rules_choose(store: Store) -> None:
    """A queue of four owners (different weights, earlier usage, estimates and scores, some
    jobs already aged): claim after claim, the database takes the job that
    :func:`buildmaster.fairshare.choose` takes on the state read just before. The simulator
    runs the pure rules, so this is what makes it faithful to the master."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    people = await owners(store, ["ann", "bob", "cat", "dan"])
    jobs = await queue_jobs(store, data, "f", 48)
    rng = random.Random(25)
    for job_id in jobs:
        owner = rng.choice(people[:3] if rng.random() < 0.9 else people)
        await store.db.execute(
            "UPDATE buildqueue SET shareowner = %s, lastscore = %s,"
            " estimated_duration = make_interval(secs => %s),"
            " datecreated = now() - make_interval(secs => %s) WHERE id = %s",
            (
                owner,
                rng.choice([100, 500, 500, 900]),
                rng.choice([60, 300, 1200]),
                rng.choice([10, 100, 200]) + (4000 if rng.random() < 0.1 else 0),
                job_id,
            ),
        )
    await store.db.execute(
        "UPDATE fairshare SET half_life = 600, aging_bound = 4000, aging_slack = 500"
    )
    await store.db.execute(
        "INSERT INTO shareweight VALUES (%s, 3), (%s, 0.5)", (people[1], people[2])
    )
    await set_share_usage(store, people[0], 2000.0, age=300)
    await bookkeeping_is_true(store)
    free = await builders(store, data, "fb", 40)
    rules_seen: collections.Counter[str] = collections.Counter()
    for builder in free:
        waiting, usage, now, config = await rules_state(store, data.processor_386.id)
        expected = choose(waiting, usage, now, config)
        got = await store.jobs.claim_next(builder)
        assert expected is not None and got is not None
        assert got.id == expected.job.id, (expected, usage)
        rules_seen[expected.rule] += 1
    assert rules_seen["aged"] >= 2 and rules_seen["fair share"] >= 20, rules_seen
    await bookkeeping_is_true(store)
    # the claims' owners: every owner served, not the best scores first
    served = collections.Counter(
        r[0]
        for r in await store.db.query("SELECT shareowner FROM buildqueue WHERE builder IS NOT NULL")
    )
    assert set(served) >= set(people[:3])


@pytest_twisted.ensureDeferred
async def test_two_masters_claiming_at_once_share_builders_and_never_share_a_job(
    reactor: Any, store: Store, dsn: str
) -> None:
    """Owner ann queues 30 jobs, bob 6; 24 builders ask two masters (two pools) at once,
    through the scanner's claims (shared statements). Every job goes to one builder, no
    builder gets two, bob's jobs go as his deficit says (not after ann's, as by score),
    and the waiting counts the claim reads stay true."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    ann, bob = await owners(store, ["ann", "bob"])
    ann_jobs = await queue_jobs(store, data, "a", 30)
    bob_jobs = await queue_jobs(store, data, "b", 6)
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s, lastscore = 900 WHERE id = ANY(%s)", (ann, ann_jobs)
    )
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s, lastscore = 100 WHERE id = ANY(%s)", (bob, bob_jobs)
    )
    free = await builders(store, data, "tm", 24)
    other_db = Database(reactor, dsn, size=4)
    await other_db.connect()
    try:
        other = Store(other_db)
        other.jobs.claim_pace = store.jobs.claim_pace = 0
        claims = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(
                    (store if i % 2 else other).jobs.claim_next_for_dispatch(b)
                )
                for b in free
                for i in range(2)
            ]
        )
    finally:
        await other_db.close()
    claimed = [c.job for c in claims if c is not None]
    assert len(claimed) == 24
    assert len({j.id for j in claimed}) == 24  # never one job twice
    assert len({j.builder_id for j in claimed}) == 24  # nor a builder with two
    rows = await store.db.query(
        "SELECT shareowner, count(*) FROM buildqueue WHERE builder IS NOT NULL GROUP BY 1"
    )
    # by score alone ann's 30 jobs (900) would have taken all 24 builders; with shares the
    # owners alternate until bob's six are gone (18 + 6), give or take the claims the two
    # masters make at the same moment, each before the other's charge is committed
    served: dict[int, int] = dict(rows)
    assert served[ann] + served[bob] == 24 and served[bob] >= 4, served
    await bookkeeping_is_true(store)


async def a_chroot(store: Store, name: str) -> int:
    """A chroot's library file record (the claim only compares ids; no bytes needed)."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    [(alias,)] = await store.db.query(
        "WITH c AS (INSERT INTO libraryfilecontent (filesize, sha1, sha256, md5)"
        " VALUES (1, %s, %s, %s) RETURNING id)"
        " INSERT INTO libraryfilealias (content, filename) SELECT id, %s FROM c RETURNING id",
        (digest[:40], digest, digest[:32], name),
    )
    return int(alias)


@pytest_twisted.ensureDeferred
async def test_builders_claiming_together_take_the_jobs_whose_chroot_they_hold(
    store: Store,
) -> None:
    """A trusted builder keeps the chroots it was sent (its two latest, recorded with the
    dispatch). When builders claim together, each job goes to one that holds its chroot:
    the jobs claimed are the same (no job's turn changes), only who takes which."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    breezy = await store.distributions.new_series(data.hoary.distribution_id, "breezy", "5.10")
    breezy_i386 = await store.distributions.new_arch_series(breezy, "i386", data.processor_386)
    hoary_chroot, breezy_chroot = (
        await a_chroot(store, "hoary.tar"),
        await a_chroot(store, "breezy.tar"),
    )
    await store.db.execute(
        "UPDATE distroarchseries SET chroot = CASE id WHEN %s THEN %s WHEN %s THEN %s END"
        " WHERE id IN (%s, %s)",
        (
            data.hoary_i386.id,
            hoary_chroot,
            breezy_i386.id,
            breezy_chroot,
            data.hoary_i386.id,
            breezy_i386.id,
        ),
    )

    async def job(name: str, das: Any, score: int) -> int:
        spr = await store.sources.new(name, "1", data.hoary)
        build = await store.builds.createBuild(
            spr, das, PackagePublishingPocket.RELEASE, data.primary
        )
        queued = await store.queue.createBuildQueueEntry(build)
        await store.db.execute(
            "UPDATE buildqueue SET lastscore = %s WHERE id = %s", (score, queued.id)
        )
        return queued.id

    first, second = await builders(store, data, "aff", 2)
    # each builder builds once: first on breezy, second on hoary
    for builder, das in ((first, breezy_i386), (second, data.hoary_i386)):
        claimed = await store.jobs.claim(await job(f"warm-{builder.name}", das, 0), builder)
        await store.jobs.record_dispatch(claimed, builder, datetime.datetime.now(datetime.UTC))
        await store.jobs.finish(
            claimed, builder, BuildStatus.FULLYBUILT, datetime.datetime.now(datetime.UTC)
        )
    held: dict[int, list[int]] = dict(
        await store.db.query(
            "SELECT id, chroots FROM builder WHERE id IN (%s, %s)", (first.id, second.id)
        )
    )
    assert held == {first.id: [breezy_chroot], second.id: [hoary_chroot]}
    # the shared claim statement (what builders claiming at the same moment run), asked
    # by first, then second
    best = await job("best", data.hoary_i386, 900)  # hoary: second holds its chroot
    other = await job("other", breezy_i386, 100)  # breezy: first holds its chroot
    first, second = await store.builders.get(first), await store.builders.get(second)
    claims = await store.jobs._claim_many([first, second])
    got = {c.job.builder_id: c.job.id for c in claims if c is not None}
    # by asking order alone, first would have taken the best job and fetched its chroot
    assert (got[second.id], got[first.id]) == (best, other)
    assert claims[0] is not None and claims[0].context.chroot is not None
    assert claims[0].context.chroot.id == breezy_chroot


@pytest_twisted.ensureDeferred
async def test_an_owner_is_charged_what_its_builds_really_used(store: Store) -> None:
    """A claim charges the job's estimate at once; a claim released before the build started
    is refunded; a build that ends is charged what it ran (from its dispatch to its end), not
    its estimate. The waiting counts follow every step."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    [job_id] = await queue_jobs(store, data, "u", 1)
    [owner] = await owners(store, ["ann"])
    await store.db.execute(
        "UPDATE buildqueue SET estimated_duration = interval '300 seconds', shareowner = %s"
        " WHERE id = %s",
        (owner, job_id),
    )
    [builder] = await builders(store, data, "u", 1)

    async def usage() -> float:
        [(value,)] = await store.db.query(
            "SELECT sum(usage * power(0.5, extract(epoch FROM now() - stamp)"
            " / (SELECT half_life FROM fairshare))) FROM shareusage WHERE owner = %s",
            (owner,),
        )
        return float(value)

    assert await usage() == 0.0
    claimed = await store.jobs.claim(job_id, builder)
    assert await usage() == pytest.approx(300.0, abs=1.0)
    await bookkeeping_is_true(store)
    assert await store.jobs.release_claim(claimed, builder, "never sent")
    assert await usage() == pytest.approx(0.0, abs=1.0)
    await bookkeeping_is_true(store)
    claimed = await store.jobs.claim(job_id, builder)
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=120)
    await store.jobs.record_dispatch(claimed, builder, started)
    await store.jobs.finish(
        claimed, builder, BuildStatus.FULLYBUILT, datetime.datetime.now(datetime.UTC)
    )
    # charged 300, corrected by 120 - 300 when it ended: 120 (a little decayed meanwhile)
    assert await usage() == pytest.approx(120.0, abs=2.0)
    await bookkeeping_is_true(store)


async def _session_with_stripe(reactor: Any, dsn: str, avoid: int | None) -> tuple[Database, int]:
    """A one-connection pool whose session writes a stripe other than ``avoid``."""
    for _ in range(32):
        db = Database(reactor, dsn, size=1)
        await db.connect()
        [(stripe,)] = await db.query("SELECT shareusage_my_stripe()")
        if stripe != avoid:
            return db, int(stripe)
        await db.close()
    raise AssertionError("no session with another stripe in 32 tries")


@pytest_twisted.ensureDeferred
async def test_claims_of_one_owner_in_two_sessions_do_not_wait_for_each_other(
    reactor: Any, store: Store, dsn: str
) -> None:
    """A farm whose jobs mostly belong to one owner (the primary archive) claims from many
    sessions at once: one session's uncommitted claim must not hold up another's (its
    usage bookkeeping once sat in one row per owner, locked until commit)."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    first, second = await queue_jobs(store, data, "hot", 2)
    one, two = await builders(store, data, "hot", 2)
    usage_sql = (
        "SELECT coalesce(sum(usage), 0) FROM shareusage"
        " WHERE owner = %s AND processor = %s AND NOT virtualized"
    )
    kind = (data.primary.owner_id, data.processor_386.id)
    [(before,)] = await store.db.query(usage_sql, kind)
    a, stripe_a = await _session_with_stripe(reactor, dsn, None)
    b, stripe_b = await _session_with_stripe(reactor, dsn, stripe_a)
    claim = "UPDATE buildqueue SET builder = %s, status = 1 WHERE id = %s"
    holding: defer.Deferred[None] = defer.Deferred()
    release: defer.Deferred[None] = defer.Deferred()

    async def hold_a_claim(tx: Any) -> None:
        await tx.execute(claim, (one.id, first))
        holding.callback(None)
        await release

    try:
        held = a.transaction(hold_a_claim, retries=0)
        await holding
        # without stripes this waited for the first claim's commit: here, a lock error
        await b.execute("SET lock_timeout = '5s'")
        await b.execute(claim, (two.id, second))
        release.callback(None)
        await held
    finally:
        if not release.called:
            release.callback(None)
        await a.close()
        await b.close()
    await bookkeeping_is_true(store)
    [(after,)] = await store.db.query(usage_sql, kind)
    estimates = await store.db.query(
        "SELECT sum(extract(epoch FROM estimated_duration)) FROM buildqueue WHERE id = ANY(%s)",
        ([first, second],),
    )
    # both charged (what the first had decays by a few seconds' worth meanwhile)
    assert float(after) - float(before) == pytest.approx(float(estimates[0][0]), abs=10)
