"""The claim with fair shares against real PostgreSQL: it chooses what the pure rules
(buildmaster/fairshare.py) choose on the same state (the reserve included), its bookkeeping
stays true, and two masters claiming at once never hand one job to two builders while
sharing builders out and keeping the reserve (a soft rule: claims at the same moment may
each give away one builder of it, the slack the tests allow and check)."""

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

from buildmaster.access import Grant
from buildmaster.enums import BuildStatus, PackagePublishingPocket
from buildmaster.fairshare import FairShareConfig, Farm, Waiting, choose, decayed
from buildmaster.model import Builder
from buildmaster.sampledata import SampleData, load_sample_data
from buildmaster.store import Database, Store
from buildmaster.store.views import Views
from buildmaster.testing import wait_for


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
    """shareusage.waiting and .running are what is really waiting and on a builder, per kind
    and owner."""
    rows = await store.db.query(
        "SELECT coalesce(s.processor, q.processor), coalesce(s.virtualized, q.virtualized),"
        " coalesce(s.owner, q.owner), coalesce(s.waiting, 0), coalesce(q.waiting, 0),"
        " coalesce(s.running, 0), coalesce(q.running, 0)"
        " FROM shareusage s FULL JOIN (SELECT processor, virtualized, shareowner AS owner,"
        "  count(*) FILTER (WHERE status = 0 AND builder IS NULL) AS waiting,"
        "  count(*) FILTER (WHERE builder IS NOT NULL) AS running"
        "  FROM buildqueue GROUP BY 1, 2, 3) q"
        " ON (q.processor, q.virtualized, q.owner) = (s.processor, s.virtualized, s.owner)"
    )
    wrong = [r for r in rows if r[3] != r[4] or r[5] != r[6]]
    assert not wrong, wrong


async def rules_state(
    store: Store, processor: int
) -> tuple[list[Waiting], dict[int, float], float, FairShareConfig, Farm]:
    """The waiting jobs of (processor, trusted), each owner's decayed usage, the settings and
    the kind's builders, read from the database as the pure rules take them (the builders and
    jobs on them from the tables themselves, not from the claim's bookkeeping)."""
    [(now, half_life, bound, slack, default, reserve)] = await store.db.query(
        "SELECT extract(epoch FROM now()), half_life, aging_bound, aging_slack, default_weight,"
        " reserve FROM fairshare"
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
        reserve=reserve,
    )
    [(builders, idle)] = await store.db.query(
        "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS ("
        "  SELECT 1 FROM buildqueue q WHERE q.builder = br.id))"
        " FROM builder br JOIN builderprocessor bp ON bp.builder = br.id"
        " WHERE bp.processor = %s AND NOT br.virtualized AND br.builderok AND br.active"
        " AND NOT br.manual",
        (processor,),
    )
    running: dict[Any, int] = dict(
        await store.db.query(
            "SELECT shareowner, count(*) FROM buildqueue WHERE builder IS NOT NULL"
            " AND processor = %s AND NOT virtualized GROUP BY 1",
            (processor,),
        )
    )
    return jobs, usage, now, config, Farm(builders, idle, running)


@pytest_twisted.ensureDeferred
async def test_the_claim_chooses_what_the_pure_rules_choose(store: Store) -> None:
    """A queue of four owners (different weights, earlier usage, estimates and scores, some
    jobs already aged) and 42 builders, 8 of them the reserve (0.2): claim after claim, the
    database takes the job that :func:`buildmaster.fairshare.choose` takes on the state read
    just before, or nothing when the rules keep the builder idle. The simulator runs the pure
    rules, so this is what makes it faithful to the master."""
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
        "UPDATE fairshare SET half_life = 600, aging_bound = 4000, aging_slack = 500, reserve = 0.2"
    )
    await store.db.execute(
        "INSERT INTO shareweight VALUES (%s, 3), (%s, 0.5)", (people[1], people[2])
    )
    await set_share_usage(store, people[0], 2000.0, age=300)
    await bookkeeping_is_true(store)
    free = await builders(store, data, "fb", 40)
    rules_seen: collections.Counter[str] = collections.Counter()
    for builder in free:
        waiting, usage, now, config, farm = await rules_state(store, data.processor_386.id)
        assert farm.builders == 42  # bob and frog (idle throughout) and these 40
        expected = choose(waiting, usage, now, config, farm=farm)
        got = await store.jobs.claim_next(builder)
        if expected is None:
            assert got is None, (got, farm)
            rules_seen["kept idle"] += 1
            continue
        assert got is not None, (expected, farm)
        assert got.id == expected.job.id, (expected, usage, farm)
        rules_seen[expected.rule] += 1
    assert rules_seen["aged"] >= 2 and rules_seen["fair share"] >= 20, rules_seen
    # the reserve (8 builders) decided some of the last claims: one went to an owner whose
    # turn it was not, some builders stayed idle
    assert rules_seen["reserve"] >= 1 and rules_seen["kept idle"] >= 1, rules_seen
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


@pytest_twisted.ensureDeferred
async def test_two_masters_keep_the_reserve_for_an_owner_under_its_share(
    reactor: Any, store: Store, dsn: str
) -> None:
    """22 builders, 4 of them the reserve (0.2). Owner cat runs one build; ann floods the
    queue with 40. The 20 idle builders ask two masters at once: never one job twice, and
    ann gets her share of the 18 builders beyond the reserve (17: cat's demand is 1), plus
    the reserve's soft slack: the rule has no lock, so a claim does not see the other
    master's claims in flight and each may hand out builders of the reserve (at most 3
    here: only 20 builders ask). After that, claims see the truth: cat, who used far more
    than ann lately (by deficit ann's turn), uploads a build and an idle builder takes it at
    once; the next idle builder takes nothing of ann's; an aged job of ann's is taken all
    the same."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    ann, cat = await owners(store, ["ann", "cat"])
    await store.db.execute("UPDATE fairshare SET reserve = 0.2")
    [cats_first] = await queue_jobs(store, data, "c", 1)
    await store.db.execute("UPDATE buildqueue SET shareowner = %s WHERE id = %s", (cat, cats_first))
    frog = await store.builders.get(data.frog)
    await store.jobs.claim(cats_first, frog)
    ann_jobs = await queue_jobs(store, data, "a", 40)
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s, lastscore = 900 WHERE id = ANY(%s)", (ann, ann_jobs)
    )
    free = await builders(store, data, "rm", 20)
    bob = await store.builders.get(data.bob)
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
    assert len({j.id for j in claimed}) == len(claimed)  # never one job twice
    assert len({j.builder_id for j in claimed}) == len(claimed)
    assert {j.id for j in claimed} <= set(ann_jobs)
    # 17 is what claims one after the other give (the reserve's four stay idle: bob and
    # three of these); the soft slack lets the two masters' claims in flight give more
    assert 17 <= len(claimed) <= 20, len(claimed)
    await bookkeeping_is_true(store)
    idle = [b for b in free if b.id not in {j.builder_id for j in claimed}] + [bob]
    running = len(claimed)
    # cat used far more than ann lately: by deficit alone, ann's turn
    await set_share_usage(store, cat, 1e6)
    [cats_second] = await queue_jobs(store, data, "c2", 1)
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s WHERE id = %s", (cat, cats_second)
    )
    got = await store.jobs.claim_next(idle[0])
    assert got is not None and got.id == cats_second
    if len(idle) < 2:
        return  # the slack took every other builder (not seen here so far)
    assert await store.jobs.claim_next(idle[1]) is None  # ann is over her share
    # what an operator is told about one of ann's waiting builds
    [(waiting_build,)] = await store.db.query(
        "SELECT build FROM buildqueue WHERE shareowner = %s AND builder IS NULL"
        " ORDER BY id LIMIT 1",
        (ann,),
    )
    views = Views(store.db)
    share = await views.shares.standing(await views.builds.summary(waiting_build, Grant(1, True)))
    assert share is not None and share.held_back
    assert (share.running, share.builders, share.idle_builders, share.reserve) == (
        running,
        22,
        len(idle) - 1,
        4,
    )
    assert share.share_builders == 16.0  # 18 beyond the reserve, less cat's 2
    assert f"Held back by the reserve: ann runs {running} build(s) of this kind" in share.text
    oldest = min(set(ann_jobs) - {j.id for j in claimed})
    await store.db.execute(
        "UPDATE buildqueue SET datecreated = now() - interval '5 hours' WHERE id = %s", (oldest,)
    )
    got = await store.jobs.claim_next(idle[1])
    assert got is not None and got.id == oldest  # aged: never held back
    await bookkeeping_is_true(store)


@pytest_twisted.ensureDeferred
async def test_two_claims_at_the_same_moment_neither_wait_nor_see_each_other_for_the_reserve(
    reactor: Any, store: Store, dsn: str
) -> None:
    """The reserve is a soft rule without a lock. 12 builders, 2 of them the reserve (0.2);
    cat runs one build, ann 8 and has 9 more waiting: her share of the 10 builders beyond
    the reserve is 9 (cat's demand is 1). 3 builders are idle, one more than the reserve, so
    claims one after the other give ann one builder and then nothing. Two sessions claim at
    the same moment, one holding its claim uncommitted: the other does not wait for it (a
    lock timeout would fail it; a lock per kind would wait here) and, not seeing it, counts
    3 idle too: both give ann a builder, one of the reserve's. That is the soft slack, one
    builder per claim in flight; the next claim sees the truth and gives ann nothing."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    ann, cat = await owners(store, ["ann", "cat"])
    await store.db.execute("UPDATE fairshare SET reserve = 0.2")
    [cats] = await queue_jobs(store, data, "c", 1)
    await store.db.execute("UPDATE buildqueue SET shareowner = %s WHERE id = %s", (cat, cats))
    await store.jobs.claim(cats, await store.builders.get(data.frog))
    ann_jobs = await queue_jobs(store, data, "a", 17)
    await store.db.execute(
        "UPDATE buildqueue SET shareowner = %s WHERE id = ANY(%s)", (ann, ann_jobs)
    )
    busy = await builders(store, data, "busy", 8)
    for job, builder in zip(ann_jobs, busy, strict=False):
        await store.jobs.claim(job, builder)
    one, two = await builders(store, data, "idle", 2)
    bob = await store.builders.get(data.bob)
    kind = [data.processor_386.id]
    [(n, idle, reserve)] = await store.db.query(
        "SELECT builders, idle, reserve FROM fairshare_reserve(%s, false)", (kind,)
    )
    assert (n, idle, reserve) == (12, 3, 2)
    # what a master's claim runs (one builder asking)
    claim = "SELECT id FROM buildqueue_claim_many(ARRAY[%s], %s, false)"
    a, stripe_a = await _session_with_stripe(reactor, dsn, None)
    b, _ = await _session_with_stripe(reactor, dsn, stripe_a)
    holding: defer.Deferred[None] = defer.Deferred()
    release: defer.Deferred[None] = defer.Deferred()
    firsts: list[int] = []

    async def hold_a_claim(tx: Any) -> None:
        firsts.extend(r[0] for r in await tx.query(claim, (one.id, kind)))
        holding.callback(None)
        await release

    try:
        held = a.transaction(hold_a_claim, retries=0)
        await holding
        await b.execute("SET lock_timeout = '5s'")
        seconds = [r[0] for r in await b.query(claim, (two.id, kind))]
        release.callback(None)
        await held
    finally:
        if not release.called:
            release.callback(None)
        await a.close()
        await b.close()
    # both counted 3 idle, more than the reserve: both took one of ann's jobs (one after
    # the other, the second would have counted 2 and taken nothing)
    assert len(firsts) == len(seconds) == 1 and firsts != seconds
    assert set(firsts + seconds) <= set(ann_jobs)
    await bookkeeping_is_true(store)
    # now 1 idle and ann runs 10: held back (bob stays idle for an owner under its share)
    assert await store.jobs.claim_next(bob) is None
    [(idle, held_back)] = await store.db.query(
        "SELECT idle, held FROM fairshare_reserve(%s, false)", (kind,)
    )
    assert (idle, held_back) == (1, [ann])


_OLD_ROW_SQL = (
    "INSERT INTO shareusage_stripe (processor, virtualized, owner, stripe, waiting, running,"
    " usage, stamp) VALUES (%s, true, %s, %s, 0, %s, %s,"
    " now() - make_interval(secs => %s * (SELECT half_life FROM fairshare)))"
)


async def usage_owners(db: Any, processor: int) -> set[int]:
    rows = await db.query(
        "SELECT DISTINCT owner FROM shareusage_stripe WHERE processor = %s AND virtualized",
        (processor,),
    )
    return {r[0] for r in rows}


@pytest_twisted.ensureDeferred
async def test_owners_idle_for_twenty_half_lives_are_forgotten(store: Store) -> None:
    """The claims read every owner's usage rows of their kind: the rows of an owner with
    nothing waiting or running whose usage has not changed for 20 half-lives are deleted;
    an owner with work, or idle for less, keeps them."""
    data = await load_sample_data(store)
    i386 = data.processor_386.id
    gone, recent, busy = await owners(store, ["gone", "recent", "busy"])
    # nothing of its own left, its running count split across two stripes (a claim in one
    # session, the end of the build in another), long idle
    await store.db.execute(_OLD_ROW_SQL, (i386, gone, 0, 1, 500.0, 21))
    await store.db.execute(_OLD_ROW_SQL, (i386, gone, 3, -1, -200.0, 22))
    await store.db.execute(_OLD_ROW_SQL, (i386, recent, 0, 0, 500.0, 10))
    await store.db.execute(_OLD_ROW_SQL, (i386, busy, 0, 1, 500.0, 30))  # one still running
    assert await usage_owners(store.db, i386) == {gone, recent, busy}

    assert await store.jobs.forget_idle_owners() == 1
    assert await usage_owners(store.db, i386) == {recent, busy}
    assert await store.jobs.forget_idle_owners() == 0


@pytest_twisted.ensureDeferred
async def test_a_job_queued_while_its_idle_owner_is_forgotten_is_counted(
    reactor: Any, store: Store, dsn: str
) -> None:
    """Forgetting takes no lock on the claims: a job queued for the owner in another session
    while its rows are being deleted waits for them, then counts in a row of its own."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    ppa = data.cprov_ppa
    owner = ppa.owner_id
    i386 = data.processor_386.id
    queuer, stripe = await _session_with_stripe(reactor, dsn, None)
    try:
        # the owner's long-idle rows, one in the stripe the queuing session writes
        await store.db.execute("DELETE FROM shareusage_stripe WHERE owner = %s", (owner,))
        await store.db.execute(_OLD_ROW_SQL, (i386, owner, stripe, 1, 300.0, 25))
        await store.db.execute(_OLD_ROW_SQL, (i386, owner, (stripe + 1) % 8, -1, 0.0, 25))
        spr = await store.sources.new("late", "1", data.hoary)
        build = await store.builds.createBuild(
            spr, data.hoary_i386, PackagePublishingPocket.RELEASE, ppa
        )
        forgetting: defer.Deferred[None] = defer.Deferred()
        commit: defer.Deferred[None] = defer.Deferred()

        async def forget(tx: Any) -> int:
            [(n,)] = await tx.query("SELECT shareusage_forget()")
            forgetting.callback(None)
            await commit
            return int(n)

        forgot = store.db.transaction(forget, retries=0)
        await forgetting
        queued = defer.Deferred.fromCoroutine(Store(queuer).queue.createBuildQueueEntry(build))

        async def queuer_waits() -> bool:
            rows = await store.db.query(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%INSERT INTO buildqueue%%'"
            )
            return bool(rows[0][0])

        await wait_for(reactor, queuer_waits, timeout=30, what="the queuing to wait")
        assert not queued.called
        commit.callback(None)
        assert await forgot == 1
        await queued
    finally:
        await queuer.close()
    await bookkeeping_is_true(store)
    [(waiting, running)] = await store.db.query(
        "SELECT waiting, running FROM shareusage WHERE owner = %s AND processor = %s"
        " AND virtualized",
        (owner, i386),
    )
    assert (waiting, running) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_running_master_forgets_idle_owners_once_an_hour(
    reactor: Any, make_world: Any, store: Store
) -> None:
    from twisted.internet import task

    from buildmaster.config import MasterConfig
    from buildmaster.master import FORGET_INTERVAL

    clock = task.Clock()
    clock.advance(reactor.seconds())
    world = await make_world(MasterConfig(scan_interval=3600.0), clock=clock)
    master = world.harness.master
    master.startService()
    await master.when_ready()
    data = world.data
    [gone] = await owners(store, ["gone"])
    i386 = data.processor_386.id
    await store.db.execute(_OLD_ROW_SQL, (i386, gone, 0, 0, 500.0, 21))
    clock.advance(FORGET_INTERVAL - 1)
    assert gone in await usage_owners(store.db, i386)

    async def forgotten() -> bool:
        return gone not in await usage_owners(store.db, i386)

    clock.advance(1)
    await wait_for(reactor, forgotten, timeout=30, what="the idle owner forgotten")


@pytest_twisted.ensureDeferred
async def test_builders_claiming_together_for_one_owner_take_aged_jobs_then_the_best(
    store: Store,
) -> None:
    """While one owner alone has work of the kind, the shared claim takes its jobs in one
    UPDATE: the same jobs, in the same order, as claims one after the other (the aged
    ones, longest waiting first, then by score)."""
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    jobs = await queue_jobs(store, data, "one", 6)
    scores = dict(zip(jobs, (50, 10, 900, 500, 100, 700), strict=True))
    for job_id, score in scores.items():
        await store.db.execute(
            "UPDATE buildqueue SET lastscore = %s WHERE id = %s", (score, job_id)
        )
    # the first two have waited past the aging threshold, the second longer
    for job_id, hours in ((jobs[0], 4), (jobs[1], 5)):
        await store.db.execute(
            "UPDATE buildqueue SET datecreated = now() - make_interval(hours => %s) WHERE id = %s",
            (hours, job_id),
        )
    asking = await builders(store, data, "one", 4)
    claims = await store.jobs._claim_many(asking)
    got = [c.job.id if c is not None else None for c in claims]
    assert got == [jobs[1], jobs[0], jobs[2], jobs[5]]
    assert [c.job.builder_id for c in claims if c is not None] == [b.id for b in asking]
    await bookkeeping_is_true(store)
    # the next ones take what is left, best first
    more = await store.jobs._claim_many(await builders(store, data, "two", 3))
    assert [c.job.id if c is not None else None for c in more] == [jobs[3], jobs[4], None]
    await bookkeeping_is_true(store)
