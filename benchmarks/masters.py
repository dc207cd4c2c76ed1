"""Benchmark: one master against two on the same database, with the same farm (issue 24).

Processes (same machine, same clock):

* a throwaway PostgreSQL, fsync on, ``synchronous_commit = on`` while measuring, with
  ``pg_stat_statements`` (statements per build);
* the farm: ``twistd slavesim --count N --build-time T`` (one process);
* one or two ``twistd buildmaster`` processes, each with a state directory of its own, all
  on the one database and one ``--files-dir``; every build has its own source package and
  ``.dsc`` (downloaded from the librarian at dispatch), every builder gets the chroot once.

The builds are queued once, all of them; then, for each entry of ``--sequence`` (e.g.
``1,2,1,2``), that many masters are started, given time to share the farm (each holds its
share of the builders' locks) and ``--warmup`` seconds, and measured for ``--window``
seconds; then they are stopped (what they had in flight is collected by the next ones):

* completed builds per second (``date_finished`` in the window);
* CPU per completed build of each master process, of PostgreSQL (every process of the
  cluster) and of the farm;
* statements per build (``pg_stat_statements``, every statement of the masters, their
  session's included) and transactions per build (``pg_stat_database.xact_commit``);
* lock waits: backends waiting for a lock (``pg_stat_activity.wait_event_type = 'Lock'``,
  sampled every 0.25 s: mean and peak) and deadlocks (``pg_stat_database``).

::

    python benchmarks/masters.py [--builders 300] [--build-time 3] [--sequence 1,2,1,2]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

#: the sampler's own statements, left out of the statements per build
MARK = "/* bench-sampler */"


async def _one(db: Any, sql: str, args: Any = None) -> Any:
    return (await db.query(f"{MARK} {sql}", args))[0]


async def _counters(db: Any) -> tuple[int, int, int]:
    """Statements (of everyone but this sampler), commits, deadlocks so far."""
    statements, commits, deadlocks = await _one(
        db,
        "SELECT (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
        "  WHERE dbid = d.datid AND query NOT LIKE %s),"
        " d.xact_commit, d.deadlocks FROM pg_stat_database d WHERE d.datname = current_database()",
        (f"%{MARK}%",),
    )
    return int(statements), int(commits), int(deadlocks)


async def _holders(db: Any) -> list[int]:
    from buildmaster.ownership import OWNERSHIP_LOCK

    rows = await db.query(
        f"{MARK} SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s::oid AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " GROUP BY pid ORDER BY 1",
        (OWNERSHIP_LOCK,),
    )
    return [int(r[0]) for r in rows]


async def _finished_between(db: Any, start: float, end: float) -> int:
    (n,) = await _one(
        db,
        "SELECT count(*) FROM build WHERE date_finished >= %s AND date_finished < %s",
        tuple(datetime.datetime.fromtimestamp(t, datetime.UTC) for t in (start, end)),
    )
    return int(n)


def _start_masters(
    children: common.Children, workdir: Path, dsn: str, count: int, run: int, scan: float
) -> list[Any]:
    masters = []
    for i in range(count):
        state = workdir / f"master{i}"
        state.mkdir(exist_ok=True)
        masters.append(
            children.start(
                [common.TWISTD, "-n", "--pidfile=", "--logfile", str(workdir / f"m{run}-{i}.log")]
                + ["buildmaster", "--dsn", dsn, "--state-dir", str(state)]
                + ["--files-dir", str(workdir / "files"), "--port", "0"]
                + ["--scan-interval", str(scan)],
                cwd=workdir,
            )
        )
    return masters


async def measure(
    reactor: Any, args: argparse.Namespace, ctx: dict[str, Any], db: Any, run: int, count: int
) -> dict[str, Any]:
    """Start ``count`` masters, measure one window, stop them."""
    from twisted.internet.task import LoopingCall

    children, workdir, cluster = ctx["children"], ctx["dir"], ctx["cluster"]
    masters = _start_masters(children, workdir, ctx["dsn"], count, run, args.scan_interval)
    try:
        deadline = time.monotonic() + 120
        while True:
            held = await _holders(db)
            if (
                len(held) == count
                and sum(held) == args.builders
                and min(held) >= 0.9 * (args.builders / count)
            ):
                break
            if time.monotonic() > deadline or any(m.poll() is not None for m in masters):
                raise SystemExit(f"the masters did not share the farm: locks held {held}")
            await common.sleep(reactor, 0.5)
        await common.sleep(reactor, args.warmup)
        waiting_samples: list[int] = []

        async def sample() -> None:
            (n,) = await _one(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()",
            )
            waiting_samples.append(int(n))

        sampler = LoopingCall(sample)
        cpu0 = [common.cpu_seconds(m.pid) for m in masters]
        pg0 = common.postgres_cpu(cluster)
        farm0 = common.cpu_seconds(ctx["farm_pid"])
        statements0, commits0, deadlocks0 = await _counters(db)
        t0 = time.time()
        done = sampler.start(0.25)
        await common.sleep(reactor, args.window)
        sampler.stop()
        await done
        t1 = time.time()
        cpu1 = [common.cpu_seconds(m.pid) for m in masters]
        pg1 = common.postgres_cpu(cluster)
        farm1 = common.cpu_seconds(ctx["farm_pid"])
        statements1, commits1, deadlocks1 = await _counters(db)
        built = await _finished_between(db, t0, t1)
        (waiting,) = await _one(db, "SELECT count(*) FROM buildqueue WHERE status = 0")
    finally:
        for m in masters:
            children.stop(m)
    per = max(built, 1)
    return {
        "masters": count,
        "builds/s": built / (t1 - t0),
        "built": built,
        "master CPU ms/build": [(b - a) * 1000 / per for a, b in zip(cpu0, cpu1, strict=True)],
        "master CPU share": [(b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)],
        "postgres CPU ms/build": (pg1 - pg0) * 1000 / per,
        "postgres CPU share": (pg1 - pg0) / (t1 - t0),
        "farm CPU ms/build": (farm1 - farm0) * 1000 / per,
        "farm CPU share": (farm1 - farm0) / (t1 - t0),
        "statements/build": (statements1 - statements0) / per,
        "commits/build": (commits1 - commits0) / per,
        "lock waits mean": statistics.fmean(waiting_samples) if waiting_samples else 0.0,
        "lock waits peak": max(waiting_samples, default=0),
        "deadlocks": deadlocks1 - deadlocks0,
        "waiting after": int(waiting),
        "load": common.loadavg(),
    }


async def run(reactor: Any, args: argparse.Namespace, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from buildmaster.librarian import Librarian
    from buildmaster.librarian.farm import farm_identity
    from buildmaster.store import Database, Store

    db = Database(reactor, ctx["dsn"], size=4)
    await db.connect()
    try:
        await db.execute("ALTER SYSTEM SET synchronous_commit = off")
        await db.execute("SELECT pg_reload_conf()")
        store = Store(db)
        librarian = Librarian(
            reactor,
            db,
            ctx["dir"] / "files",
            "http://unused/",
            (await farm_identity(db)).secret,
        )
        data = await common.prepare_world(store, librarian)
        await common.register_builders(store, ctx["listing"], data.processor_amd64)
        t = time.monotonic()
        sources = await common.create_sources(store, librarian, data.hoary, args.builds, batch=50)
        builds = await common.create_builds(store, db, sources, data.hoary_amd64, data.primary)
        await db.execute(common.QUEUE_SQL, (builds,))
        print(f"{len(builds)} builds queued ({time.monotonic() - t:.0f} s)", flush=True)
        await db.execute("ALTER SYSTEM RESET synchronous_commit")
        await db.execute("SELECT pg_reload_conf()")
        await db.execute("CHECKPOINT")
        results = []
        for run_number, count in enumerate(int(x) for x in args.sequence.split(",")):
            result = await measure(reactor, args, ctx, db, run_number, count)
            results.append(result)
            print(_line(result), flush=True)
            if result["waiting after"] == 0:
                print("  (the queue ran dry: give more --builds)", flush=True)
        return results
    finally:
        await db.close()


def _line(r: dict[str, Any]) -> str:
    cpu = ", ".join(f"{x:.1f}" for x in r["master CPU ms/build"])
    share = ", ".join(f"{x:.0%}" for x in r["master CPU share"])
    return (
        f"{r['masters']} master(s): {r['builds/s']:.1f} builds/s ({r['built']} in the window);"
        f" master CPU/build {cpu} ms (each busy {share}); PostgreSQL"
        f" {r['postgres CPU ms/build']:.1f} ms/build (busy {r['postgres CPU share']:.0%});"
        f" farm {r['farm CPU ms/build']:.1f} ms/build (busy {r['farm CPU share']:.0%});"
        f" {r['statements/build']:.1f} statements, {r['commits/build']:.1f} commits per build;"
        f" backends waiting for a lock: mean {r['lock waits mean']:.2f}, peak"
        f" {r['lock waits peak']}; deadlocks {r['deadlocks']}; load {r['load']}"
    )


def _summary(results: list[dict[str, Any]]) -> None:
    by: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["masters"]].append(r)
    print("\nmedians per number of masters:")
    for count, rs in sorted(by.items()):

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        total_cpu = statistics.median(sum(r["master CPU ms/build"]) for r in rs)
        print(
            f"  {count}: {med('builds/s'):.1f} builds/s; masters' CPU {total_cpu:.1f} ms/build"
            f" together; PostgreSQL {med('postgres CPU ms/build'):.1f} ms/build; farm"
            f" {med('farm CPU ms/build'):.1f} ms/build;"
            f" {med('statements/build'):.1f} statements/build; lock waits mean"
            f" {med('lock waits mean'):.2f} (n={len(rs)})"
        )
    if 1 in by and 2 in by:
        ratio = statistics.median(r["builds/s"] for r in by[2]) / statistics.median(
            r["builds/s"] for r in by[1]
        )
        print(f"  2 masters / 1 master, builds/s: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builders", type=int, default=300)
    parser.add_argument("--build-time", type=float, default=3.0)
    parser.add_argument("--builds", type=int, default=8000)
    parser.add_argument("--sequence", default="1,2,1,2")
    parser.add_argument("--scan-interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    common.raise_file_limit(args.builders + 200)
    print(common.machine_line(), flush=True)
    print(
        f"{args.builders} builders, builds of {args.build_time:g} s, scan interval"
        f" {args.scan_interval:g} s, sequence {args.sequence}; {args.warmup:g} s warm-up,"
        f" {args.window:g} s window; PostgreSQL fsync on",
        flush=True,
    )
    with (
        common.sigterm_as_exit(),
        tempfile.TemporaryDirectory(prefix="bench-masters-") as tmp,
        common.Children() as children,
    ):
        workdir = Path(tmp)
        cluster = common.start_cluster(
            fsync=True, settings={"shared_preload_libraries": "'pg_stat_statements'"}
        )
        try:
            dsn = common.create_database(cluster)
            common.run_autocommit(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            farm, listing = common.start_slavesim(
                children, workdir, args.builders, None, build_time=args.build_time
            )
            ctx = {
                "dir": workdir,
                "dsn": dsn,
                "listing": listing,
                "cluster": cluster,
                "children": children,
                "farm_pid": farm.pid,
            }
            results = common.run_async(lambda reactor: run(reactor, args, ctx))
        finally:
            children.stop_all()
            cluster.stop()
    _summary(results)
    print(common.machine_line(), flush=True)


if __name__ == "__main__":
    main()
