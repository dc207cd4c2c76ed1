"""Benchmark: the web pages with 1,000 builders and 1,000,000 builds (issue 23).

The world of ``benchmarks/api.py`` (``--builds`` builds inserted with ``generate_series``,
20 % in cprov's PPA, 2 % waiting), plus ``--builders`` builders (``page-0000``...: i386 and
amd64, a fifth virtualized; 3 % failed by the master and 2 % disabled by an operator, each
with failnotes; 30 % building one of the waiting builds) and six hours of per-minute samples
for the picture. The whole master runs in this process and this process asks it over HTTP
(a kept-alive connection, one request at a time), the kinds taking turns round after round,
``--requests`` times after ``--warmup``:

* ``/builders`` (every builder, the queue per kind, the picture);
* ``/builds`` (the newest 50) and ``/builds?before=ID`` (a page deep in the list);
* ``/queue`` (for information: not a target).

The baseline, in the same rounds: the API's JSON of the same reads (``/api/v1/builders``,
``/api/v1/builds?limit=50``): what the pages add to the reads is the rendering.

    python benchmarks/pages.py [--builds 1000000] [--builders 1000] [--requests 200]
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
import api

BUILDERS_SQL = """
INSERT INTO builder (name, url, virtualized, builderok, failnotes, failed_by_master, manual,
                     clean_status)
SELECT 'page-' || lpad(i::text, 4, '0'), 'http://127.0.0.1:9/', i %% 5 = 0,
       NOT (i %% 100 < 5),
       CASE WHEN i %% 100 < 3 THEN '(111, ''Connection refused'') after 5 failures'
            WHEN i %% 100 < 5 THEN 'disabled by an operator: disk replaced' END,
       i %% 100 < 3, false, 0
FROM generate_series(0, %(builders)s - 1) AS i
"""

PROCESSORS_SQL = """
INSERT INTO builderprocessor (builder, processor)
SELECT b.id, p.id FROM builder b, processor p
WHERE b.name LIKE 'page-%%' AND p.name IN ('386', 'amd64')
"""

#: 30 % of the builders build one of the waiting builds of their kind
BUSY_SQL = """
WITH busy AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM builder
    WHERE name LIKE 'page-%%' AND builderok AND NOT virtualized AND id %% 10 < 3),
jobs AS (
    SELECT q.id AS job, q.build, row_number() OVER (ORDER BY q.id) AS n FROM buildqueue q
    WHERE q.builder IS NULL AND NOT q.virtualized
    LIMIT (SELECT count(*) FROM busy)),
claimed AS (
    UPDATE buildqueue q SET builder = busy.id, status = 1, date_started = now() - interval '7 minutes'
    FROM jobs JOIN busy USING (n) WHERE q.id = jobs.job RETURNING q.build, q.builder)
UPDATE build b SET buildstate = 6, builder = claimed.builder, date_started = now() - interval '7 minutes'
FROM claimed WHERE b.id = claimed.build
"""

SAMPLES_SQL = """
INSERT INTO farm_sample (minute, finished, waiting, running)
SELECT date_trunc('minute', now()) - i * interval '1 minute', 40 + (hashint4(i) %% 30),
       20000 - i * 10, 300
FROM generate_series(1, 360) AS i
"""


async def load(db: Any, store: Any, builds: int, builders: int) -> dict[str, Any]:
    world = await api.load(db, store, builds, 10)
    t = time.monotonic()
    await db.execute(BUILDERS_SQL, {"builders": builders})
    await db.execute(PROCESSORS_SQL, {})
    await db.execute(BUSY_SQL, {})
    await db.execute(SAMPLES_SQL, {})
    for table in ("builder", "builderprocessor", "buildqueue", "build", "farm_sample"):
        await db.execute(f"VACUUM ANALYZE {table}")
    rows = await db.query(
        "SELECT count(*), count(*) FILTER (WHERE NOT builderok),"
        " (SELECT count(*) FROM buildqueue WHERE builder IS NOT NULL) FROM builder"
    )
    print(
        f"added {builders} builders in {time.monotonic() - t:.0f} s: {rows[0][0]} builders,"
        f" {rows[0][1]} out of service, {rows[0][2]} building",
        flush=True,
    )
    return world


def cases(world: dict[str, Any], rng: random.Random) -> list[tuple[str, Any]]:
    top = 1000000 + world["builds"]

    def before() -> int:
        return rng.randint(1000100, top)

    return [
        ("/builders", lambda: "/builders"),
        ("/builds", lambda: "/builds"),
        ("/builds?before=ID", lambda: f"/builds?before={before()}"),
        ("/queue", lambda: "/queue"),
        ("baseline: /api/v1/builders", lambda: "/api/v1/builders"),
        ("baseline: /api/v1/builds?limit=50", lambda: "/api/v1/builds?limit=50"),
    ]


async def measure(
    reactor: Any, base: str, world: dict[str, Any], requests: int, warmup: int, seed: int
) -> dict[str, Any]:
    from buildmaster.httpclient import HTTPClient

    http = HTTPClient(reactor)
    rng = random.Random(seed)
    kinds = cases(world, rng)
    results: dict[str, dict[str, Any]] = {name: {"latency": [], "bytes": []} for name, _ in kinds}
    try:
        for i in range(warmup + requests):
            for name, path in kinds:
                t0 = time.perf_counter()
                response = await http.request(b"GET", base + path(), max_body=64 * 1024 * 1024)
                t1 = time.perf_counter()
                if response.status != 200:
                    raise RuntimeError(f"{name}: {response.status} {response.body!r:.300}")
                if i >= warmup:
                    results[name]["latency"].append(t1 - t0)
                    results[name]["bytes"].append(len(response.body or b""))
            if i % 10 == 9:
                last = ", ".join(
                    f"{n} {r['latency'][-1] * 1000:.0f}" for n, r in results.items() if r["latency"]
                )
                print(f"  round {i + 1}: {last} ms", flush=True)
    finally:
        http.close_idle()
    for name, measured in results.items():
        measured["bytes"] = sum(measured["bytes"]) / len(measured["bytes"])
        print(
            f"  {name}: {common.fmt_ms(measured['latency'])}; {measured['bytes'] / 1024:.0f} KiB",
            flush=True,
        )
    return results


async def run(reactor: Any, args: argparse.Namespace, dsn: str, workdir: Path) -> dict[str, Any]:
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
        return await measure(reactor, base, world, args.requests, args.warmup, args.seed)
    finally:
        await common.stop_service(reactor, service)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=1_000_000)
    parser.add_argument("--builders", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--master-cpu", default="", help="CPU(s) for this process ('' = any)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(common.machine_line())
    print(
        f"{args.builds} builds, {args.builders} builders; PostgreSQL fsync on, unpinned; this"
        f" process (master and client) on CPU {args.master_cpu or 'any'}; {args.requests}"
        f" requests per page after {args.warmup} warm-up",
        flush=True,
    )
    with common.sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        cluster = common.start_cluster(fsync=True, settings={"max_wal_size": "4GB"})
        try:
            dsn = common.create_database(cluster)
            common.pin_self(args.master_cpu)
            common.log_to(None)
            results = common.run_async(lambda reactor: run(reactor, args, dsn, Path(tmp)))
        finally:
            cluster.stop()
    print()
    print(f"load average at the end: {common.loadavg()}")
    print("| page over HTTP (ms) | p50 | p90 | p99 | size (KiB) |")
    print("|---|---|---|---|---|")
    for name, measured in results.items():
        s = common.summary(measured["latency"])
        print(
            f"| {name} | {s['p50'] * 1000:.2f} | {s['p90'] * 1000:.2f} | {s['p99'] * 1000:.2f} |"
            f" {measured['bytes'] / 1024:.0f} |"
        )
    for name in ("/builders", "/builds", "/builds?before=ID"):
        p99 = common.summary(results[name]["latency"])["p99"]
        print(
            f"target: {name} renders in under 200 ms at p99: {'met' if p99 < 0.2 else 'missed'}"
            f" (p99 {p99 * 1000:.2f} ms)"
        )


if __name__ == "__main__":
    main()
