"""Benchmark: listing 100 builds out of 1,000,000 through the operator API (issue 21).

A throwaway PostgreSQL (fsync on) gets the seed's world, ten builders and ``--builds``
builds inserted with ``generate_series`` (one source package release per two builds, i386
and amd64; 20 % in cprov's PPA; 85 % FULLYBUILT, 8 % FAILEDTOBUILD, 2 % CHROOTWAIT, 2 %
MANUALDEPWAIT, 1 % CANCELLED, 2 % NEEDSBUILD and queued; finished builds have a builder and
times), then ``VACUUM ANALYZE``. The whole master runs in this process
(:class:`~buildmaster.service.BuildmasterService`, pinned to ``--master-cpu``), and this
process asks it over HTTP (a kept-alive connection, one request at a time), for each kind of
listing, ``--requests`` times after ``--warmup`` discarded ones:

* the first page (``/api/v1/builds?limit=100``);
* a page deep in the list (``before`` = a random id: what the next pages are);
* filtered by state (FAILEDTOBUILD), by archive (the PPA), by builder, by source package
  name, by an hour of finishing (3,600 builds finished in it), each from a random
  ``before``.

The kinds take turns, round after round, so that each sees the same load of the machine.
The latency is from sending the request to the whole answer (read by the client, which
shares the master's process: a conservative figure). The baseline, measured in the same
rounds (every tenth): a deep page's statement alone, prepared, straight to the database, by
keyset (``id < before``) and by ``OFFSET`` (what a page number would need).

With ``--readers RATE``, then: ``benchmarks/api_readers.py`` (a process of its own, its mix
of reads) asks the master RATE times per second for ``--readers-seconds``, and the CPU this
process (the master alone: the listings' client is idle then) and PostgreSQL spend is
divided by the reads answered: the master's CPU per read of the mix, which the load of the
machine changes much less than a latency (``--profile-readers``: with cProfile on the
reactor thread meanwhile, its top functions per read). ``--requests 0`` skips the listings.
To measure another checkout's master with this script, put it first on ``PYTHONPATH``.

    python benchmarks/api.py [--builds 1000000] [--requests 300] [--readers 200]
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

SOURCES_SQL = """
INSERT INTO sourcepackagerelease (id, name, version, component, section, urgency,
                                  upload_distroseries, dateuploaded)
SELECT 1000000 + i, 'bench' || (i %% 50000), '1.0-' || i, 1 + (i %% 3), 'misc', 1 + (i %% 4),
       %(series)s, %(start)s + i * interval '2 seconds'
FROM generate_series(1, %(builds)s / 2) AS i
"""

#: state by the build's hash: 85 % FULLYBUILT (1), 8 % FAILEDTOBUILD (2), 2 % CHROOTWAIT (4),
#: 2 % MANUALDEPWAIT (3), 1 % CANCELLED (10), 2 % NEEDSBUILD (0)
BUILDS_SQL = """
INSERT INTO build (id, sourcepackagerelease, distroarchseries, archive, pocket, processor,
                   virtualized, buildstate, datecreated, date_started, date_first_dispatched,
                   date_finished, builder, failure_count)
SELECT 1000000 + i, 1000000 + (i + 1) / 2, d.id, a.id, 0, d.processor, a.require_virtualized,
       g.state, g.created,
       CASE WHEN g.state <> 0 THEN g.created + interval '1 minute' END,
       CASE WHEN g.state <> 0 THEN g.created + interval '1 minute' END,
       CASE WHEN g.state <> 0 THEN g.created + interval '1 minute'
            + (abs(g.h) %% 3600) * interval '1 second' END,
       CASE WHEN g.state <> 0 THEN (SELECT min(id) FROM builder WHERE name LIKE 'bench-%%')
            + abs(g.h / 7) %% 10 END,
       0
FROM (SELECT i, h, %(start)s + i * interval '1 second' AS created,
             CASE WHEN abs(h) %% 100 < 85 THEN 1 WHEN abs(h) %% 100 < 93 THEN 2
                  WHEN abs(h) %% 100 < 95 THEN 4 WHEN abs(h) %% 100 < 97 THEN 3
                  WHEN abs(h) %% 100 < 98 THEN 10 ELSE 0 END AS state
      FROM (SELECT i, hashint4(i) AS h FROM generate_series(1, %(builds)s) AS i) x) g
JOIN distroarchseries d ON d.distroseries = %(series)s
     AND d.architecturetag = CASE WHEN g.i %% 2 = 0 THEN 'amd64' ELSE 'i386' END
JOIN archive a ON a.id = CASE WHEN abs(g.h / 100) %% 10 < 2 THEN %(ppa)s ELSE %(primary)s END
"""

QUEUE_SQL = """
INSERT INTO buildqueue (build, lastscore, processor, virtualized, datecreated)
SELECT b.id, abs(hashint4(b.id)) %% 3000, b.processor, b.virtualized, b.datecreated
FROM build b WHERE b.id > 1000000 AND b.buildstate = 0
"""


async def load(db: Any, store: Any, builds: int, builders: int) -> dict[str, Any]:
    data = await common.prepare_world(store)
    for i in range(max(builders, 10)):  # the builds' builders are the first ten
        await store.builders.new(f"bench-{i}", "http://127.0.0.1:9/", [data.processor_386])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    args = {
        "series": data.hoary.id,
        "builds": builds,
        "primary": data.primary.id,
        "ppa": data.cprov_ppa.id,
        "start": start,
    }
    t = time.monotonic()

    async def fill(tx: Any) -> None:
        await tx.execute("SET LOCAL synchronous_commit = off")
        await tx.execute(SOURCES_SQL, args)
        await tx.execute(BUILDS_SQL, args)
        await tx.execute("ALTER TABLE buildqueue DISABLE TRIGGER buildqueue_notify_waiting")
        await tx.execute("ALTER TABLE buildqueue DISABLE TRIGGER buildqueue_notify_queued")
        await tx.execute(QUEUE_SQL, {})
        await tx.execute("ALTER TABLE buildqueue ENABLE TRIGGER buildqueue_notify_waiting")
        await tx.execute("ALTER TABLE buildqueue ENABLE TRIGGER buildqueue_notify_queued")

    await db.transaction(fill, retries=0)
    for table in ("sourcepackagerelease", "build", "buildqueue"):
        await db.execute(f"VACUUM ANALYZE {table}")
    await db.execute("CHECKPOINT")
    rows = await db.query("SELECT buildstate, count(*) FROM build GROUP BY 1 ORDER BY 1")
    print(
        f"loaded {builds} builds in {time.monotonic() - t:.0f} s: "
        + ", ".join(f"state {s}: {n}" for s, n in rows),
        flush=True,
    )
    return {"start": start, "builds": builds}


def cases(world: dict[str, Any], rng: random.Random) -> list[tuple[str, Any]]:
    top = 1000000 + world["builds"]
    hour = world["start"] + datetime.timedelta(days=3)  # 3,600 builds finished in it

    def before() -> int:
        return rng.randint(1000100, top)

    return [
        ("first page", lambda: "/api/v1/builds?limit=100"),
        ("a page deep in the list", lambda: f"/api/v1/builds?limit=100&before={before()}"),
        (
            "state=failedtobuild",
            lambda: f"/api/v1/builds?limit=100&state=failedtobuild&before={before()}",
        ),
        (
            "archive=~cprov/ubuntu/ppa",
            lambda: f"/api/v1/builds?limit=100&archive=~cprov/ubuntu/ppa&before={before()}",
        ),
        (
            "builder=bench-3",
            lambda: f"/api/v1/builds?limit=100&builder=bench-3&before={before()}",
        ),
        (
            "source=benchN",
            lambda: f"/api/v1/builds?limit=100&source=bench{rng.randint(0, 49999)}",
        ),
        (
            "finished within an hour",
            lambda: (
                "/api/v1/builds?limit=100&finished_after="
                + hour.strftime("%Y-%m-%dT%H:%M:%SZ")
                + "&finished_before="
                + (hour + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
    ]


async def measure(
    reactor: Any,
    base: str,
    db: Any,
    world: dict[str, Any],
    requests: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """Every kind of listing in turn, ``warmup + requests`` rounds (so that each sees the
    same load of the machine); every tenth round, the statement of a deep page by keyset and
    by OFFSET, prepared, straight to the database (the baseline)."""
    from buildmaster.access import ANONYMOUS
    from buildmaster.httpclient import HTTPClient
    from buildmaster.store.views.builds import (
        SUMMARY_COLUMNS,
        SUMMARY_FROM,
        visibility_args,
        visible_sql,
    )

    http = HTTPClient(reactor)
    rng = random.Random(seed)
    kinds = cases(world, rng)
    results: dict[str, dict[str, Any]] = {name: {"latency": [], "bytes": []} for name, _ in kinds}
    statements: dict[str, list[float]] = {"keyset": [], "offset": []}
    top = 1000000 + world["builds"]
    # the API's statement (a page's ids first), and the same with OFFSET for the ids
    page = (
        f"SELECT {SUMMARY_COLUMNS} FROM {SUMMARY_FROM} WHERE b.id = ANY(ARRAY("
        f"  SELECT b.id FROM build b JOIN archive a ON a.id = b.archive WHERE {visible_sql()}"
        " {page} LIMIT %(limit)s)) ORDER BY b.id DESC"
    )
    cpu0 = 0.0
    try:
        for i in range(warmup + requests):
            if i == warmup:
                cpu0 = common.self_cpu()
            for name, path in kinds:
                t0 = time.perf_counter()
                response = await http.request(b"GET", base + path(), max_body=16 * 1024 * 1024)
                t1 = time.perf_counter()
                if response.status != 200:
                    raise RuntimeError(f"{name}: {response.status} {response.body!r:.300}")
                if i >= warmup:
                    results[name]["latency"].append(t1 - t0)
                    results[name]["bytes"].append(len(response.body or b""))
            if i % 10:
                continue  # the OFFSET statement is slow: every tenth round is enough
            before = rng.randint(1000100, top)
            args = {"before": before, "skip": top - before, "limit": 100}
            args.update(visibility_args(ANONYMOUS))
            for label, sql in (
                ("keyset", page.replace("{page}", "AND b.id < %(before)s ORDER BY b.id DESC")),
                ("offset", page.replace("{page}", "ORDER BY b.id DESC OFFSET %(skip)s")),
            ):
                t0 = time.perf_counter()
                await db.query(sql, args, prepared=True)
                if i >= warmup:
                    statements[label].append(time.perf_counter() - t0)
        cpu = (common.self_cpu() - cpu0) / (requests * len(kinds))
    finally:
        http.close_idle()
    for name, measured in results.items():
        measured["bytes"] = sum(measured["bytes"]) / len(measured["bytes"])
        print(
            f"  {name}: {common.fmt_ms(measured['latency'])}; {measured['bytes'] / 1024:.0f} KiB",
            flush=True,
        )
    print(
        f"  CPU of this process (master and client) per listing: {cpu * 1000:.2f} ms",
        flush=True,
    )
    for label, values in statements.items():
        print(f"  a deep page's statement by {label}: {common.fmt_ms(values)}", flush=True)
    return {"listings": results, "statements": statements, "cpu": cpu}


async def measure_readers(
    reactor: Any,
    base: str,
    cluster: Any,
    rate: float,
    seconds: float,
    profile: bool,
    tmp: Path,
    only: str = "",
) -> dict[str, Any]:
    """The readers' mix at ``rate`` per second for ``seconds``: this process's CPU (the
    master's) and PostgreSQL's per read answered."""
    import json

    out = tmp / "readers.json"
    profiler = common.Profile("cprofile") if profile else None
    with common.Children() as children:
        readers = children.start(
            [
                common.PYTHON,
                str(Path(__file__).resolve().parent / "api_readers.py"),
                "--url",
                base,
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
                "--out",
                str(out),
                *(["--only", only] if only else []),
            ]
        )
        await common.sleep(reactor, 1.0)  # its start-up and first reads
        threads0, pg0 = common.thread_cpu(), common.postgres_cpu(cluster)
        t0 = time.monotonic()
        if profiler is not None:
            profiler.start()
        while readers.poll() is None:
            await common.sleep(reactor, 0.2)
        if profiler is not None:
            profiler.stop()
        elapsed = time.monotonic() - t0
        threads1, pg1 = common.thread_cpu(), common.postgres_cpu(cluster)
    done = json.loads(out.read_text())
    answered = done["answered"]
    master = (threads1["main"] + threads1["others"]) - (threads0["main"] + threads0["others"])
    result = {
        "rate": done["rate"],
        "answered": answered,
        "skipped": done["skipped"],
        "failed": done["failed"],
        "latency": done["latency"],
        "master_cpu": master / max(answered, 1),
        "reactor_cpu": (threads1["main"] - threads0["main"]) / max(answered, 1),
        "pg_cpu": (pg1 - pg0) / max(answered, 1),
        "master_busy": master / elapsed,
    }
    print(
        f"  readers: {answered} answered ({done['rate']:.0f}/s of {rate:g} asked),"
        f" {done['skipped']} skipped, failed {done['failed']}; master's CPU per read"
        f" {result['master_cpu'] * 1000:.2f} ms (reactor thread"
        f" {result['reactor_cpu'] * 1000:.2f} ms), PostgreSQL's {result['pg_cpu'] * 1000:.2f}"
        f" ms; the master busy {result['master_busy']:.0%} of a CPU",
        flush=True,
    )
    for kind, values in done["latency"].items():
        print(
            f"    {kind}: n={values['n']} p50 {values['p50'] * 1000:.1f} ms,"
            f" p99 {values['p99'] * 1000:.1f} ms",
            flush=True,
        )
    if profiler is not None:
        profiler.print(max(answered, 1), "read", 40)
    return result


async def run(
    reactor: Any, args: argparse.Namespace, dsn: str, workdir: Path, cluster: Any
) -> dict[str, Any]:
    from buildmaster.config import MasterConfig
    from buildmaster.service import BuildmasterService, ServiceSettings
    from buildmaster.store import Database, Store

    db = Database(reactor, dsn, size=2)
    await db.connect()
    try:
        world = await load(db, Store(db), args.builds, args.builders)
    finally:
        await db.close()
    service = BuildmasterService(
        reactor,
        ServiceSettings(
            state_dir=workdir / "state",
            dsn=dsn,
            port="tcp:0:interface=127.0.0.1",
            master=MasterConfig(scan_interval=3600.0),
            metrics_interval=3600.0,
        ),
    )
    await common.start_service(reactor, service)
    try:
        base = f"http://127.0.0.1:{service.web.getHost().port}"
        assert service.db is not None
        results: dict[str, Any] = {}
        if args.requests:
            results = await measure(
                reactor, base, service.db, world, args.requests, args.warmup, args.seed
            )
        if args.readers:
            results["readers"] = await measure_readers(
                reactor,
                base,
                cluster,
                args.readers,
                args.readers_seconds,
                args.profile_readers,
                workdir,
                args.readers_only,
            )
        return results
    finally:
        await common.stop_service(reactor, service)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=1_000_000)
    parser.add_argument("--builders", type=int, default=10, help="(500 in throughput.py)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--master-cpu", default="", help="CPU(s) for this process ('' = any)")
    parser.add_argument("--readers", type=float, default=0.0, help="reads per second (0: none)")
    parser.add_argument("--readers-seconds", type=float, default=30.0)
    parser.add_argument("--profile-readers", action="store_true")
    parser.add_argument(
        "--readers-only", default="", help="the readers send only this kind of their mix"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(common.machine_line())
    print(
        f"{args.builds} builds; PostgreSQL fsync on, unpinned; this process (master and"
        f" client) on CPU {args.master_cpu or 'any'}; {args.requests} requests per listing"
        f" after {args.warmup} warm-up",
        flush=True,
    )
    with common.sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        cluster = common.start_cluster(fsync=True, settings={"max_wal_size": "4GB"})
        try:
            dsn = common.create_database(cluster)
            common.pin_self(args.master_cpu)
            common.log_to(None)
            results = common.run_async(lambda reactor: run(reactor, args, dsn, Path(tmp), cluster))
        finally:
            cluster.stop()
    print()
    print(f"load average at the end: {common.loadavg()}")
    import buildmaster

    print(f"the master's code: {Path(buildmaster.__file__).parent}")
    if "readers" in results:
        r = results["readers"]
        print(
            f"readers: {r['rate']:.0f} reads/s answered; the master's CPU per read"
            f" {r['master_cpu'] * 1000:.2f} ms (reactor thread {r['reactor_cpu'] * 1000:.2f} ms),"
            f" PostgreSQL's {r['pg_cpu'] * 1000:.2f} ms"
        )
    if not args.requests:
        return
    print("| listing 100 builds over HTTP (ms) | p50 | p90 | p99 |")
    print("|---|---|---|---|")
    worst = 0.0
    for name, measured in results["listings"].items():
        s = common.summary(measured["latency"])
        worst = max(worst, s["p99"])
        print(f"| {name} | {s['p50'] * 1000:.2f} | {s['p90'] * 1000:.2f} | {s['p99'] * 1000:.2f} |")
    for label, values in results["statements"].items():
        s = common.summary(values)
        print(
            f"| a deep page's statement alone, by {label} | {s['p50'] * 1000:.2f} |"
            f" {s['p90'] * 1000:.2f} | {s['p99'] * 1000:.2f} |"
        )
    print(f"CPU of this process (master and client) per listing: {results['cpu'] * 1000:.2f} ms")
    print(
        f"target: listing 100 builds out of {args.builds} <= 20 ms at p99:"
        f" {'met' if worst <= 0.020 else 'missed'} (worst listing p99 {worst * 1000:.2f} ms)"
    )


if __name__ == "__main__":
    main()
