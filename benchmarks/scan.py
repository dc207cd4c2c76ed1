"""Benchmark: one full scan of 1,000 builders with 50 ms of latency per call (issue 5).

Starts a throwaway PostgreSQL (fsync off), migrates it, loads the seed's world (its own two
builders switched off) and registers the ``--builders`` builders of a separate
``twistd slavesim --count N --latency L`` process (pinned to ``--builders-cpu``). This
process, pinned to ``--master-cpu``, then measures, several times, interleaved:

* the master: a :class:`~buildmaster.master.BuilddMaster` (not started as a service, but
  listening for NOTIFY as a started one does, unless ``--no-listen``) doing
  ``await master.scan_all()``: one read of the database, then every builder scanned in
  parallel (``status()``, and for an idle builder the look for a job, which a listening
  master skips while it knows that no job of the builder's kind waits). For each run a new
  master makes a *cold* scan (new connections to every builder) and then ``--warm`` warm
  scans (kept-alive connections);
* the floor: a bare ``twisted.web.xmlrpc.Proxy`` per builder, 1,000 parallel
  ``status`` calls, answers thrown away;
* once (before the reactor starts): the old design, a serial blocking scan with stdlib
  ``xmlrpc.client.ServerProxy(url + "rpc").status()``, one builder after the other
  (``--serial-fraction`` < 1 polls a random sample and extrapolates).

Wall time, and this process's CPU time (``getrusage``) divided by the number of polls; also
the builders' process CPU and PostgreSQL's CPU during each scan, and how many database
statements the master ran.

    python benchmarks/scan.py [--builders 1000] [--latency 0.05] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import warnings
import xmlrpc.client
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def serial_scan(urls: list[str]) -> tuple[float, float, int]:
    """The old design: one blocking ``status()`` after the other. (wall s, CPU s, failures)"""
    failures = 0
    cpu0, t0 = common.self_cpu(), time.perf_counter()
    for url in urls:
        try:
            xmlrpc.client.ServerProxy(url + "rpc").status()
        except Exception:
            failures += 1
    return time.perf_counter() - t0, common.self_cpu() - cpu0, failures


class Counting:
    """Counts the statements a Database runs (wraps the instance's methods)."""

    def __init__(self, db: Any) -> None:
        self.count = 0
        for name in ("query", "execute", "transaction", "session_query"):
            setattr(db, name, self._wrap(getattr(db, name)))

    def _wrap(self, method: Any) -> Any:
        def counted(*args: Any, **kw: Any) -> Any:
            self.count += 1
            return method(*args, **kw)

        return counted


async def measure(reactor: Any, what: Any, sim_pid: int, cluster: Any) -> dict[str, float]:
    cpu0, sim0, pg0 = common.self_cpu(), common.cpu_seconds(sim_pid), common.postgres_cpu(cluster)
    t0 = time.perf_counter()
    await what()
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": common.self_cpu() - cpu0,
        "sim_cpu": common.cpu_seconds(sim_pid) - sim0,
        "pg_cpu": max(0.0, common.postgres_cpu(cluster) - pg0),
    }


async def run(reactor: Any, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet import defer
    from twisted.web.xmlrpc import Proxy

    from buildmaster.config import MasterConfig
    from buildmaster.enums import BuilderStatus
    from buildmaster.librarian import Librarian
    from buildmaster.master import BuilddMaster
    from buildmaster.store import Database, Store

    listing, sim_pid, cluster, workdir = ctx["listing"], ctx["sim_pid"], ctx["cluster"], ctx["dir"]
    db = Database(reactor, ctx["dsn"], size=args.pool_size)
    await db.connect()
    try:
        store = Store(db)
        data = await common.prepare_world(store)
        await common.register_builders(store, listing, data.processor_amd64)
        librarian = Librarian(
            reactor,
            db,
            workdir / "librarian",
            "http://127.0.0.1:9/librarian/",
            Librarian.load_or_create_secret(workdir),
        )
        counting = Counting(db)
        urls = [b["url"] for b in listing]
        proxies = [Proxy((u + "rpc").encode(), reactor=reactor) for u in urls]

        async def floor() -> None:
            results = await defer.DeferredList(
                [p.callRemote("status") for p in proxies], consumeErrors=True
            )
            bad = sum(1 for ok, _ in results if not ok)
            if bad:
                raise RuntimeError(f"{bad} bare Proxy polls failed")

        profiler = None
        cold: list[dict[str, float]] = []
        warm: list[dict[str, float]] = []
        floors: list[dict[str, float]] = []
        for i in range(args.runs):
            master = BuilddMaster(reactor, store, librarian, MasterConfig())
            if args.listen:
                # as a started master does: NOTIFY tells it when jobs appear, so it may trust
                # "no waiting job of this kind" between notifications (see master.known_empty)
                await store.db.listen("buildqueue_waiting", master._queue_changed)
                master._listening = True
            for n in range(1 + args.warm):
                before = counting.count
                m = await measure(reactor, master.scan_all, sim_pid, cluster)
                m["statements"] = counting.count - before
                idle = sum(
                    1
                    for w in master.workers.values()
                    if w.last_status is not None
                    and w.last_status.builder_status is BuilderStatus.IDLE
                )
                if idle != len(listing):
                    raise RuntimeError(f"only {idle} of {len(listing)} builders were seen IDLE")
                (cold if n == 0 else warm).append(m)
                print(
                    f"run {i + 1} {'cold' if n == 0 else 'warm'} scan:"
                    f" {m['wall'] * 1000:.0f} ms wall, master CPU {m['cpu'] * 1000:.0f} ms"
                    f" ({m['cpu'] / len(urls) * 1000:.3f} ms/poll),"
                    f" builders' CPU {m['sim_cpu'] * 1000:.0f} ms, PostgreSQL CPU"
                    f" {m['pg_cpu'] * 1000:.0f} ms, {m['statements']} DB statements,"
                    f" load {common.loadavg()}",
                    flush=True,
                )
                await common.sleep(reactor, args.pause)
            if args.profile and i == args.runs - 1:
                # extra warm scans, not counted above: cProfile slows them down
                profiler = common.Profile(args.profiler)
                profiler.start()
                for _ in range(args.warm):
                    await master.scan_all()
                profiler.stop()
                if args.profile_out:
                    profiler.dump(args.profile_out)
            master.http.close_idle()
            await common.sleep(reactor, args.pause)
            f = await measure(reactor, floor, sim_pid, cluster)
            floors.append(f)
            print(
                f"run {i + 1} floor (bare Proxy): {f['wall'] * 1000:.0f} ms wall, CPU"
                f" {f['cpu'] * 1000:.0f} ms ({f['cpu'] / len(urls) * 1000:.3f} ms/poll),"
                " builders' CPU"
                f" {f['sim_cpu'] * 1000:.0f} ms",
                flush=True,
            )
            await common.sleep(reactor, args.pause)
        return {"cold": cold, "warm": warm, "floor": floors, "profiler": profiler}
    finally:
        await db.close()


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def span(runs: list[dict[str, float]], key: str, scale: float = 1000, digits: int = 0) -> str:
    values = [r[key] * scale for r in runs]
    return (
        f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-"
        f"{max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builders", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call")
    parser.add_argument("--runs", type=int, default=5, help="new masters (one cold scan each)")
    parser.add_argument("--warm", type=int, default=4, help="warm scans per master")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between measurements")
    parser.add_argument("--pool-size", type=int, default=8, help="database connections")
    parser.add_argument(
        "--no-listen",
        dest="listen",
        action="store_false",
        help="masters do not LISTEN for new jobs (then every idle builder asks for a job)",
    )
    parser.add_argument(
        "--serial-fraction",
        type=float,
        default=1.0,
        help="poll this random fraction of the builders in the serial baseline (extrapolated)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile --warm more warm scans (not counted)",
    )
    parser.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    parser.add_argument(
        "--profile-out", default="", help="also write the cProfile stats here (for pstats)"
    )
    parser.add_argument("--master-cpu", default="0", help="CPU(s) for this process ('' = any)")
    parser.add_argument("--builders-cpu", default="1", help="CPU(s) for slavesim ('' = any)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    common.raise_file_limit(args.builders + 100)

    print(common.machine_line())
    print(
        f"{args.builders} builders (twistd slavesim, --latency {args.latency}) on CPU"
        f" {args.builders_cpu or 'any'}; master (this process) on CPU {args.master_cpu or 'any'};"
        f" PostgreSQL (fsync off) unpinned; {args.runs} masters x (1 cold + {args.warm} warm)",
        flush=True,
    )
    with (
        common.sigterm_as_exit(),
        tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp,
        common.Children() as children,
    ):
        workdir = Path(tmp)
        cluster = common.start_cluster(fsync=False)
        try:
            dsn = common.create_database(cluster)
            sim, listing = common.start_slavesim(
                children, workdir, args.builders, args.builders_cpu, latency=args.latency
            )
            common.pin_self(args.master_cpu)
            urls = [b["url"] for b in listing]
            sample = urls
            if args.serial_fraction < 1:
                sample = random.Random(5).sample(
                    urls, max(1, int(len(urls) * args.serial_fraction))
                )
            print(
                f"serial baseline: polling {len(sample)} builders one after the other ...",
                flush=True,
            )
            s_wall, s_cpu, s_fail = serial_scan(sample)
            scale = len(urls) / len(sample)
            serial = {"wall": s_wall * scale, "cpu": s_cpu * scale, "failures": s_fail}
            print(
                f"serial baseline: {s_wall:.2f} s for {len(sample)} polls"
                + (
                    f" (extrapolated to {serial['wall']:.1f} s for {len(urls)})"
                    if scale != 1
                    else ""
                )
                + f", CPU {s_cpu / len(sample) * 1000:.3f} ms/poll, {s_fail} failures,"
                f" load {common.loadavg()}",
                flush=True,
            )
            ctx = {
                "listing": listing,
                "sim_pid": sim.pid,
                "cluster": cluster,
                "dsn": dsn,
                "dir": workdir,
            }
            results = common.run_async(lambda reactor: run(reactor, args, ctx))
        finally:
            children.stop_all()
            cluster.stop()

    n = args.builders
    cold, warm, floor = results["cold"], results["warm"], results["floor"]
    print()
    print(f"load average at the end: {common.loadavg()}")
    print(
        f"| {n} builders, {args.latency * 1000:.0f} ms latency | wall ms, median (min-max) |"
        " master CPU ms | master CPU per poll, ms | builders' CPU ms | PostgreSQL CPU ms |"
        " DB statements |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, runs in (
        (f"master, cold scan (n={len(cold)})", cold),
        (f"master, warm scan (n={len(warm)})", warm),
        (f"floor: bare twisted.web.xmlrpc.Proxy (n={len(floor)})", floor),
    ):
        per_poll = [dict(r, per=r["cpu"] / n) for r in runs]
        statements = span(runs, "statements", 1) if "statements" in runs[0] else ""
        print(
            f"| {label} | {span(runs, 'wall')} | {span(runs, 'cpu')} |"
            f" {span(per_poll, 'per', 1000, 3)} | {span(runs, 'sim_cpu')} |"
            f" {span(runs, 'pg_cpu')} |"
            f" {statements} |"
        )
    print(
        "| serial blocking xmlrpc.client (n=1"
        f"{', extrapolated' if args.serial_fraction < 1 else ''})"
        f" | {serial['wall'] * 1000:.0f} | {serial['cpu'] * 1000:.0f} |"
        f" {serial['cpu'] / n * 1000:.3f} | | | |"
    )
    warm_wall, cold_wall = med(warm, "wall"), med(cold, "wall")
    print()
    print(
        f"speed-up over the serial scan: warm {serial['wall'] / warm_wall:.0f}x,"
        f" cold {serial['wall'] / cold_wall:.0f}x (target >= 100x)"
    )
    print(
        f"warm scan wall {warm_wall:.3f} s, cold {cold_wall:.3f} s (target <= 0.5 s);"
        f" floor {med(floor, 'wall'):.3f} s"
    )
    if results["profiler"] is not None:
        print(f"\nprofile of {args.warm} more warm scans ({args.profiler}; see _common.Profile):")
        results["profiler"].print(args.warm * n, "poll", 30)
        print()
    print(
        f"master CPU per poll: warm {med(warm, 'cpu') / n * 1000:.3f} ms, cold"
        f" {med(cold, 'cpu') / n * 1000:.3f} ms (target <= 0.3 ms); floor"
        f" {med(floor, 'cpu') / n * 1000:.3f} ms"
    )


if __name__ == "__main__":
    main()
