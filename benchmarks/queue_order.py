"""Benchmark: the queue in dispatch order at 100,000 waiting jobs (issue 25).

The queue listing (``/api/v1/queue/jobs``), a waiting build's position and its estimated
start follow the order builders will take the jobs in: a forecast of the fair-share rules
over the whole queue (:mod:`buildmaster.store.views.order`), which readers within
``order_max_age`` seconds (10) share. This measures what that costs, through the store's
views as the API calls them (no HTTP: the listing's statement and the forecast are the
price; the JSON is the same as before).

A throwaway PostgreSQL (fsync on) gets ``--jobs`` waiting jobs as ``benchmarks/candidate.py``
loads them (amd64 50 %, i386 20 %, arm64 20 %, armhf 10 %; 30 % in a PPA, virtualized,
spread over 20 owners; the primary archive's trusted), then two owners get a weight (3 and
0.5) and every owner some usage. Then ``--rounds`` rounds, each:

* a new forecast (``forecast(max_age=0)``): the whole of it as a reader waits for it, and
  apart, its reading alone (one snapshot, the jobs fetched through a cursor in slices) and
  its ordering alone (in slices on the reactor); meanwhile a 5 ms ``LoopingCall`` on the
  reactor records how late it runs and the CPU the reactor's thread used between two of
  its ticks (how long the reading holds the reactor at a time, whatever the machine's load
  does to the wall clock), and then, as long again with nothing read, the same (the
  baseline: what the machine's load alone does to them);
* with that forecast shared (as readers within 10 s get it): the first page (50) of one kind
  (amd64 virtualized), of every kind, a page 20,000 jobs deep, and a waiting build's standing
  (its position, estimated start and why);
* the baseline, in the same round: the score-order listing as it was (the first page's
  statement by the candidate index) and the standing's count of the jobs ahead (at most
  1,000, as it was).

    python benchmarks/queue_order.py [--jobs 100000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import candidate

#: the first page in score order, as the listing read it before (the baseline)
SCORE_PAGE_SQL = """
SELECT q.id, q.build, q.lastscore FROM buildqueue q
WHERE q.status = 0 AND q.builder IS NULL AND q.processor = %(processor)s
  AND q.virtualized = %(virtualized)s
ORDER BY q.lastscore DESC, q.id LIMIT 50
"""

#: the standing's count of the jobs ahead by score, as it was (at most 1,000)
SCORE_AHEAD_SQL = """
SELECT count(*), coalesce(sum(ahead.seconds), 0) FROM (
    SELECT extract(epoch FROM q.estimated_duration) AS seconds FROM buildqueue q
    WHERE q.status = 0 AND q.builder IS NULL AND q.processor = %(processor)s
        AND q.virtualized = %(virtualized)s
        AND (q.lastscore > %(score)s OR (q.lastscore = %(score)s AND q.id < %(job)s))
    ORDER BY q.lastscore DESC, q.id LIMIT 1000) ahead
"""


async def timed(results: dict[str, list[float]], key: str, work: Any) -> Any:
    started = time.perf_counter()
    value = await work
    results.setdefault(key, []).append(time.perf_counter() - started)
    return value


async def run(reactor: Any, args: argparse.Namespace, dsn: str) -> dict[str, list[float]]:
    from twisted.internet import task

    from buildmaster.access import ANONYMOUS
    from buildmaster.store import Database, Store

    db = Database(reactor, dsn, size=4)
    await db.connect()
    results: dict[str, list[float]] = {}
    try:
        store = Store(db)
        await candidate.load(reactor, db, store, args.jobs)
        owners = [r[0] for r in await db.query("SELECT DISTINCT shareowner FROM buildqueue")]
        await db.execute(
            "INSERT INTO shareweight VALUES (%s, 3), (%s, 0.5)", (owners[0], owners[1])
        )
        # every owner some usage (shareusage is a view over per-session stripes: one
        # stripe of each owner and kind gets it)
        await db.execute("UPDATE shareusage_stripe SET usage = 0, stamp = now()")
        await db.query(
            "SELECT shareusage_add(processor, virtualized, owner, 0,"
            " 100 + (owner * 7919) % 20000) FROM shareusage"
        )
        amd64 = await store.processors.getByName("amd64")
        kind = {"processor": amd64.id, "virtualized": True}
        views = store.views
        rng = random.Random(25)
        lateness: list[float] = []
        idle: list[float] = []
        held: dict[int, list[float]] = {}

        async def ticking(into: list[float], work: Any) -> Any:
            """Run ``work`` while a 5 ms LoopingCall records how late each tick is."""
            last = [reactor.seconds(), time.thread_time()]

            def tick() -> None:
                now, cpu = reactor.seconds(), time.thread_time()
                into.append(now - last[0] - 0.005)
                # the CPU this (the reactor's) thread used since the last tick: what held
                # the reactor, whatever the machine's load did to the wall clock
                held.setdefault(id(into), []).append(cpu - last[1])
                last[0], last[1] = now, cpu

            ticker = task.LoopingCall(tick)
            ticker.clock = reactor
            ticker.start(0.005, now=False)
            try:
                return await work
            finally:
                ticker.stop()

        for n in range(args.rounds):
            # a new forecast, and how late a 5 ms timer runs meanwhile; then as long again
            # with nothing read (the baseline: what the machine's load alone does)
            forecast = await ticking(
                lateness, timed(results, "forecast", views.queue.orders.forecast(0))
            )
            await ticking(idle, task.deferLater(reactor, results["forecast"][-1], lambda: None))
            orders = views.queue.orders
            reading = await timed(results, "statement", orders.read_queue())
            await timed(results, "ordering", orders.order(reading))
            kind_order = forecast.kind(amd64.id, True)
            assert kind_order is not None
            # readers sharing it
            await timed(
                results,
                "page",
                views.queue.waiting(ANONYMOUS, amd64.id, True, None, 50, max_age=3600),
            )
            await timed(
                results, "page_all", views.queue.waiting(ANONYMOUS, None, None, None, 50, 3600)
            )
            deep = forecast.listing(None, None).slice(20_000, 1)[0]
            await timed(
                results,
                "page_deep",
                views.queue.waiting(
                    ANONYMOUS, None, None, (20_001, deep[0].job_ids[deep[1]]), 50, 3600
                ),
            )
            build_id = kind_order.build_ids[rng.randrange(len(kind_order))]
            summary = await views.builds.summary(build_id, ANONYMOUS)
            standing = await timed(results, "standing", views.queue.standing(summary, 3600))
            assert standing is not None and standing.position_exact
            # the baseline: as it was
            await timed(results, "score_page", db.query(SCORE_PAGE_SQL, kind, prepared=True))
            assert summary.job is not None
            await timed(
                results,
                "score_ahead",
                db.query(
                    SCORE_AHEAD_SQL,
                    {**kind, "score": summary.job.lastscore, "job": summary.job.id},
                    prepared=True,
                ),
            )
            print(
                f"round {n + 1}: forecast {results['forecast'][-1] * 1000:.0f} ms"
                f" (statement {results['statement'][-1] * 1000:.0f}, ordering"
                f" {results['ordering'][-1] * 1000:.0f}); page {results['page'][-1] * 1000:.1f}"
                f" ms, score page {results['score_page'][-1] * 1000:.1f} ms;"
                f" load {common.loadavg()}",
                flush=True,
            )
        results["lateness"] = lateness
        results["idle"] = idle
        results["held"] = held.get(id(lateness), [])
        results["held_idle"] = held.get(id(idle), [])
    finally:
        await db.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--master-cpu", default="0", help="CPU(s) for this process ('' = any)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(common.machine_line())
    print(
        f"{args.jobs} waiting jobs; PostgreSQL fsync on, unpinned; this process on CPU"
        f" {args.master_cpu or 'any'}; {args.rounds} rounds",
        flush=True,
    )
    with common.sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="bench-queue-order-"):
        cluster = common.start_cluster(fsync=True, settings={"max_wal_size": "4GB"})
        try:
            dsn = common.create_database(cluster)
            common.pin_self(args.master_cpu)
            results = common.run_async(lambda reactor: run(reactor, args, dsn))
        finally:
            cluster.stop()
    print()
    print(f"load average at the end: {common.loadavg()}")
    print("| ms | p50 | p90 | max |")
    print("|---|---|---|---|")
    for key, name in (
        ("forecast", "a new forecast, as a reader waits for it"),
        ("statement", "  its reading alone (snapshot, cursor fetched in slices)"),
        ("ordering", "  its ordering alone (slices on the reactor)"),
        ("lateness", "a 5 ms reactor timer's lateness during a new forecast"),
        ("idle", "  baseline: the same timer, as long again, nothing read"),
        ("held", "the reactor thread's CPU between two ticks, during a new forecast"),
        ("held_idle", "  baseline: the same, as long again, nothing read"),
        ("page", "first page, one kind, forecast shared"),
        ("page_all", "first page, every kind, forecast shared"),
        ("page_deep", "a page 20,000 deep, every kind, forecast shared"),
        ("standing", "a waiting build's standing, forecast shared"),
        ("score_page", "baseline: first page by score (the statement as it was)"),
        ("score_ahead", "baseline: the standing's count ahead by score (as it was)"),
    ):
        s = common.summary(results[key])
        print(f"| {name} | {s['p50'] * 1000:.1f} | {s['p90'] * 1000:.1f} | {s['max'] * 1000:.1f} |")
    for busy_key, quiet_key, what in (
        ("lateness", "idle", "timer lateness"),
        ("held", "held_idle", "reactor thread CPU between ticks"),
    ):
        busy, quiet = common.summary(results[busy_key]), common.summary(results[quiet_key])
        print(
            f"{what}, reading - nothing read: p50 {(busy['p50'] - quiet['p50']) * 1000:+.1f} ms,"
            f" p90 {(busy['p90'] - quiet['p90']) * 1000:+.1f} ms,"
            f" max {(busy['max'] - quiet['max']) * 1000:+.1f} ms"
            f" (max ratio {busy['max'] / quiet['max']:.2f}); ticks {busy['n']} / {quiet['n']}"
        )


if __name__ == "__main__":
    main()
