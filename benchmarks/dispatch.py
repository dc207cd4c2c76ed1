"""Benchmark: from queueing a build to ``build()`` arriving on an idle builder (issue 5).

Processes (same machine, same clock):

* a throwaway PostgreSQL (``--fsync`` on by default: the claim's commit is on the path);
* the *recording farm* (``benchmarks/_common.py farm``, slavesim builders, no latency,
  pinned to ``--builders-cpu``): it writes the wall-clock time at which every ``build()``
  call arrives, before acting on it. Builds last an hour, so each builder takes one build
  and the next sample finds other builders idle. Every builder already has the chroot in its
  cache (steady state); the ``.dsc`` of each build is new, so the builder downloads it from
  the librarian during the dispatch, as it would in production;
* this process (pinned to ``--master-cpu``): the whole master as in production
  (:class:`~buildmaster.service.BuildmasterService`: database pool, web server with the
  librarian, master), started as a service with a 15 s scan interval, so only the NOTIFY
  path can dispatch within a tick;
* the queuer (this file, ``queue`` mode; a separate process with its own plain psycopg2
  connection): it queues builds by plain SQL (``INSERT INTO buildqueue``, as
  ``createBuildQueueEntry`` does) and records ``time.time()`` just before ``COMMIT``; the
  latency of a build is (arrival of its ``build()``) - (that time).

Phases: ``--singles`` builds one at a time (each waits for the previous ``build()`` to
arrive, then a random pause); ``--bursts`` bursts of ``--burst-size`` builds queued in one
commit; then the baseline: the triggers that send the NOTIFYs are disabled and a master with a
``--tick-interval`` scan interval dispatches ``--tick-samples`` builds at its ticks only (its
"no waiting job of this kind" cache, ``buildmaster.scan.claims.EMPTY_CACHE_LIFETIME``, is set to 0
for that phase: a tick-only master asks the database at every tick). Its
latency, as a fraction of its interval, scaled to a 15 s interval, is the measured tick-only
baseline (the analytical one: uniform over the interval, mean 7.5 s).

A breakdown of the single-build path comes from timestamps of a few master methods
(wrapped in this process only): NOTIFY received, job claimed, files ensured, build() sent.

    python benchmarks/dispatch.py [--singles 200] [--bursts 4 --burst-size 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

# -- the queuer (a separate process) -----------------------------------------------------


def run_queuer(args: argparse.Namespace) -> None:
    """Queue each sample of the plan in one commit; wait for its build() calls; pause."""
    import psycopg2

    plan: list[list[int]] = json.loads(Path(args.plan).read_text())
    record = Path(args.record)
    offset = 0
    arrived: set[str] = set()
    rng = random.Random(args.seed)
    misses = 0
    conn = psycopg2.connect(args.dsn)
    out = open(args.out, "a", buffering=1)  # open for the process lifetime
    try:
        for sample in plan:
            with conn.cursor() as cur:
                cur.execute(common.QUEUE_SQL, (sample,))
            t0 = time.time()
            conn.commit()
            t1 = time.time()
            out.write(json.dumps({"builds": sample, "t0": t0, "t1": t1}) + "\n")
            wanted = {f"PACKAGEBUILD-{b}" for b in sample}
            deadline = time.monotonic() + args.timeout
            while not wanted <= arrived and time.monotonic() < deadline:
                time.sleep(0.005)
                if record.exists():
                    with open(record) as f:
                        f.seek(offset)
                        data = f.read()
                    end = data.rfind("\n") + 1
                    offset += len(data[:end].encode())
                    for line in data[:end].splitlines():
                        arrived.add(json.loads(line)["build_id"])
            if not wanted <= arrived:
                misses += 1
                if misses >= 3:
                    raise SystemExit(
                        f"3 samples in a row never reached a builder within {args.timeout:g} s:"
                        " the master does not dispatch (see --log)"
                    )
            else:
                misses = 0
            time.sleep(rng.uniform(args.gap_min, args.gap_max))
    finally:
        out.close()
        conn.close()


# -- the master (this process) --------------------------------------------------------------


def breakdown(
    trace: common.Trace, commits: list[dict[str, Any]], arrivals: dict[int, float]
) -> dict[str, list[float]]:
    """For single samples: the time spent in each step of the path, in seconds."""
    notifies = sorted(t for kind, _, t in trace.events if kind == "notify")
    claimed = trace.first("claimed")
    files = trace.first("files")
    files_done = trace.first("files_done")
    sent = trace.first("build_sent")
    steps: dict[str, list[float]] = {
        "commit -> NOTIFY received": [],
        "NOTIFY -> job claimed (snapshot, status(), claim)": [],
        "claimed -> ensurepresent sent (build context)": [],
        "ensurepresent of chroot + .dsc (builder downloads the .dsc)": [],
        "files ensured -> build() sent": [],
        "build() sent -> arrives on the builder": [],
    }
    for c in commits:
        if len(c["builds"]) != 1:
            continue
        b = c["builds"][0]
        t0 = c["t0"]
        n = next((t for t in notifies if t >= t0), None)
        points = [
            t0,
            n,
            claimed.get(b),
            files.get(b),
            files_done.get(b),
            sent.get(b),
            arrivals.get(b),
        ]
        if any(p is None for p in points):
            continue
        for (_name, values), start, end in zip(steps.items(), points, points[1:], strict=False):
            values.append(end - start)
    return steps


async def start_service(reactor: Any, state: Path, dsn: str, interval: float) -> Any:
    from buildmaster.config import MasterConfig
    from buildmaster.service import BuildmasterService, ServiceSettings

    service = BuildmasterService(
        reactor,
        ServiceSettings(
            state_dir=state,
            dsn=dsn,
            port="tcp:0:interface=127.0.0.1",
            master=MasterConfig(scan_interval=interval),
        ),
    )
    return await common.start_service(reactor, service)


async def wait_idle(reactor: Any, master: Any, count: int, timeout: float = 120) -> None:
    """Until the master has scanned ``count`` builders and seen them (at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [w for w in master.workers.values() if w.last_status is not None]
        if len(seen) >= count and not any(w.busy for w in master.workers.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the master saw only {len(seen)} of {count} builders")
        await common.sleep(reactor, 0.1)


async def run_queuer_process(
    reactor: Any,
    ctx: dict[str, Any],
    name: str,
    plan: list[list[int]],
    args: argparse.Namespace,
    gap: tuple[float, float],
) -> list[dict[str, Any]]:
    workdir: Path = ctx["dir"]
    plan_file, out = workdir / f"plan-{name}.json", workdir / f"commits-{name}.jsonl"
    plan_file.write_text(json.dumps(plan))
    process = ctx["children"].start(
        [common.PYTHON, __file__, "queue", "--dsn", ctx["dsn"], "--plan", str(plan_file)]
        + ["--record", str(ctx["record"]), "--out", str(out), "--timeout", str(args.timeout)]
        + ["--gap-min", str(gap[0]), "--gap-max", str(gap[1])],
        cpus=args.builders_cpu,
        stderr=open(workdir / f"queuer-{name}.stderr", "wb"),  # the child owns it
    )
    while process.poll() is None:
        await common.sleep(reactor, 0.2)
    if process.returncode != 0:
        raise RuntimeError(f"the queuer failed: {(workdir / f'queuer-{name}.stderr').read_text()}")
    return [json.loads(line) for line in out.read_text().splitlines()]


async def run(reactor: Any, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from buildmaster.builderclient import BuilderClient
    from buildmaster.librarian import Librarian
    from buildmaster.master import BuilddMaster
    from buildmaster.scan import dispatch as dispatch_step
    from buildmaster.store import Database, Store
    from buildmaster.store.jobs import JobQueries

    workdir, listing = ctx["dir"], ctx["listing"]
    state = workdir / "state"
    state.mkdir()
    total = args.singles + args.bursts * args.burst_size + args.tick_samples

    # -- the world: builders, sources with their .dsc, builds (not queued yet)
    db = Database(reactor, ctx["dsn"], size=4)
    await db.connect()
    try:
        store = Store(db)
        librarian = Librarian(
            reactor,
            db,
            state / "librarian",
            "http://unused/",
            Librarian.load_or_create_secret(state),
        )
        data = await common.prepare_world(store, librarian)
        await common.register_builders(store, listing, data.processor_amd64)
        t = time.monotonic()
        sources = await common.create_sources(store, librarian, data.hoary, total)
        builds = await common.create_builds(store, db, sources, data.hoary_amd64, data.primary)
        print(f"{len(builds)} builds ready ({time.monotonic() - t:.1f} s)", flush=True)
    finally:
        await db.close()

    trace = common.Trace()
    trace.on_call(BuilddMaster, "_queue_changed", "notify")
    trace.on_return(
        JobQueries,
        "claim_next_for_dispatch",
        "claimed",
        lambda r, *a, **k: r.job.build_id if r else None,
    )
    trace.on_call(dispatch_step, "ensure_files", "files", lambda s, c, *a, **k: c.build.id)
    trace.on_return(
        dispatch_step, "ensure_files", "files_done", lambda r, s, c, *a, **k: c.build.id
    )
    trace.on_call(
        BuilderClient, "build", "build_sent", lambda self, cookie, *a: int(cookie.rsplit("-", 1)[1])
    )
    results: dict[str, Any] = {}
    try:
        service = await start_service(reactor, state, ctx["dsn"], args.scan_interval)
        try:
            master = service.master
            await wait_idle(reactor, master, len(listing))
            await common.put_chroot_on_every_builder(service)  # the steady state
            print(
                f"the master sees {len(master.workers)} idle builders, each with the chroot;"
                f" load {common.loadavg()}",
                flush=True,
            )
            singles = [[b] for b in builds[: args.singles]]
            rest = builds[args.singles :]
            bursts = [
                rest[i * args.burst_size : (i + 1) * args.burst_size] for i in range(args.bursts)
            ]
            tick_builds = rest[args.bursts * args.burst_size :]
            cpu0, rss0, t_start = common.self_cpu(), common.rss_mib(), time.monotonic()
            commits = await run_queuer_process(
                reactor, ctx, "notify", singles + bursts, args, (args.gap_min, args.gap_max)
            )
            elapsed = time.monotonic() - t_start
            results["notify_cpu"] = (common.self_cpu() - cpu0) / elapsed
            results["rss"] = (rss0, common.rss_mib())
            results["commits"] = commits
            print(f"NOTIFY phase done in {elapsed:.0f} s; load {common.loadavg()}", flush=True)
        finally:
            await common.stop_service(reactor, service)
        trace.restore()

        # -- the baseline: no NOTIFY, a master that dispatches at its ticks only
        import psycopg2

        conn = psycopg2.connect(ctx["dsn"])
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'buildqueue'::regclass"
                " AND NOT tgisinternal AND tgname LIKE '%%notify%%' ORDER BY tgname"
            )
            notifiers = [r[0] for r in cur.fetchall()]
            for name in notifiers:
                cur.execute(f'ALTER TABLE buildqueue DISABLE TRIGGER "{name}"')
        conn.close()
        print(f"tick-only baseline: triggers disabled: {', '.join(notifiers)}", flush=True)
        # a tick-only master looks for jobs at every tick: no "no job of this kind" cache
        import buildmaster.scan.claims as claims_module

        lifetime = getattr(claims_module, "EMPTY_CACHE_LIFETIME", None)
        if lifetime is not None:
            claims_module.EMPTY_CACHE_LIFETIME = 0.0
        service = await start_service(reactor, state, ctx["dsn"], args.tick_interval)
        try:
            await wait_idle(reactor, service.master, len(listing))
            results["tick_commits"] = await run_queuer_process(
                reactor, ctx, "tick", [[b] for b in tick_builds], args, (0.0, args.tick_interval)
            )
            print(f"tick-only phase done; load {common.loadavg()}", flush=True)
        finally:
            await common.stop_service(reactor, service)
            if lifetime is not None:
                claims_module.EMPTY_CACHE_LIFETIME = lifetime
    finally:
        trace.restore()
    results["trace"] = trace
    if args.trace_dump:
        with open(args.trace_dump, "w") as f:
            for kind, key, t in trace.events:
                f.write(json.dumps([kind, key, t]) + "\n")
    return results


def latencies(commits: list[dict[str, Any]], arrivals: dict[int, float]) -> tuple[list[float], int]:
    values, missing = [], 0
    for c in commits:
        for b in c["builds"]:
            if b in arrivals:
                values.append(arrivals[b] - c["t0"])
            else:
                missing += 1
    return values, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    parser.add_argument("--singles", type=int, default=200, help="builds queued one at a time")
    parser.add_argument("--bursts", type=int, default=4)
    parser.add_argument("--burst-size", type=int, default=50, help="builds per commit")
    parser.add_argument("--scan-interval", type=float, default=15.0)
    parser.add_argument("--tick-samples", type=int, default=15)
    parser.add_argument("--tick-interval", type=float, default=2.0)
    parser.add_argument("--gap-min", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--gap-max", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per sample")
    parser.add_argument(
        "--no-fsync", dest="fsync", action="store_false", help="PostgreSQL fsync off"
    )
    parser.add_argument("--log", help="write the master's log to this file")
    parser.add_argument("--trace-dump", help="write the traced master events to this file")
    parser.add_argument("--master-cpu", default="0", help="CPU(s) for this process ('' = any)")
    parser.add_argument("--builders-cpu", default="1", help="CPU(s) for the builders and queuer")
    queue = sub.add_parser("queue", help="internal: the queuer process")
    queue.add_argument("--dsn", required=True)
    queue.add_argument("--plan", required=True)
    queue.add_argument("--record", required=True)
    queue.add_argument("--out", required=True)
    queue.add_argument("--timeout", type=float, default=30.0)
    queue.add_argument("--gap-min", type=float, default=0.05)
    queue.add_argument("--gap-max", type=float, default=0.25)
    queue.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if args.mode == "queue":
        run_queuer(args)
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    common.log_to(args.log)
    count = args.singles + args.bursts * args.burst_size + args.tick_samples + 10
    common.raise_file_limit(count + 100)
    print(common.machine_line())
    print(
        f"{count} builders (recording farm, no latency) and the queuer on CPU"
        f" {args.builders_cpu or 'any'}; master (this process) on CPU {args.master_cpu or 'any'};"
        f" PostgreSQL fsync {'on' if args.fsync else 'off'}, unpinned; scan interval"
        f" {args.scan_interval:g} s",
        flush=True,
    )
    with (
        common.sigterm_as_exit(),
        tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp,
        common.Children() as children,
    ):
        workdir = Path(tmp)
        cluster = common.start_cluster(fsync=args.fsync)
        try:
            dsn = common.create_database(cluster)
            farm, listing, record = common.start_recording_farm(
                children, workdir, count, args.builders_cpu, build_time=3600
            )
            common.pin_self(args.master_cpu)
            ctx = {
                "dir": workdir,
                "dsn": dsn,
                "listing": listing,
                "record": record,
                "children": children,
            }
            results = common.run_async(lambda reactor: run(reactor, args, ctx))
            calls = common.read_build_calls(record)
        finally:
            children.stop_all()
            cluster.stop()

    arrivals: dict[int, float] = {}
    refused = 0
    for call in calls:
        b = int(call["build_id"].rsplit("-", 1)[1])
        if call["result"] == "BuilderStatus.BUILDING":
            arrivals.setdefault(b, call["t"])
        else:
            refused += 1
    commits = results["commits"]
    singles = [c for c in commits if len(c["builds"]) == 1]
    bursts = [c for c in commits if len(c["builds"]) > 1]
    single_lat, single_missing = latencies(singles, arrivals)
    burst_lat, burst_missing = latencies(bursts, arrivals)
    tick_lat, tick_missing = latencies(results["tick_commits"], arrivals)
    commit_times = [c["t1"] - c["t0"] for c in commits]
    print()
    print(f"load average at the end: {common.loadavg()}")
    print(f"build() calls refused by builders: {refused}")
    print(f"COMMIT duration (queuer): {common.fmt_ms(commit_times)}")
    print(f"one build at a time ({single_missing} never arrived): {common.fmt_ms(single_lat)}")
    print(
        f"bursts of {args.burst_size} in one commit ({burst_missing} never arrived):"
        f" {common.fmt_ms(burst_lat)}"
    )
    for i, c in enumerate(bursts):
        lat, _ = latencies([c], arrivals)
        if lat:
            print(f"  burst {i + 1}: first {min(lat) * 1000:.1f} ms, last {max(lat) * 1000:.1f} ms")
    print(
        f"tick-only master, interval {args.tick_interval:g} s, NOTIFY disabled"
        f" ({tick_missing} never arrived): {common.fmt_ms(tick_lat)}"
    )
    if tick_lat:
        scale = args.scan_interval / args.tick_interval
        print(
            f"  scaled to a {args.scan_interval:g} s interval: mean"
            f" {statistics.fmean(tick_lat) * scale:.2f} s,"
            f" p99 {common.percentile(tick_lat, 99) * scale:.2f} s"
            f" (analytical: mean {args.scan_interval / 2:.2f} s)"
        )
    print(
        f"master CPU during the NOTIFY phase: {results['notify_cpu']:.1%} of a core;"
        f" RSS {results['rss'][0]:.0f} -> {results['rss'][1]:.0f} MiB"
    )
    print("breakdown of the one-at-a-time path (ms):")
    steps = breakdown(results["trace"], singles, arrivals)
    if not any(steps.values()):
        print("  (none: the traced master methods were not all called; has the code changed?)")
    for name, values in steps.items():
        if values:
            print(f"  {name}: {common.fmt_quantiles(values, 2)}")
    print()
    print("| queue -> build() on the builder | n | mean | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    scale = args.scan_interval / args.tick_interval
    rows = [
        ("one build at a time (NOTIFY)", single_lat, 1.0),
        (f"bursts of {args.burst_size} in one commit, per build (NOTIFY)", burst_lat, 1.0),
        (f"tick-only master, NOTIFY off, {args.tick_interval:g} s interval", tick_lat, 1.0),
        (f"  same, scaled to {args.scan_interval:g} s", tick_lat, scale),
    ]
    for label, values, factor in rows:
        if values:
            v = [x * factor for x in values]
            st = common.summary(v)
            print(
                f"| {label} | {st['n']} | {st['mean'] * 1000:.1f} ms | {st['p50'] * 1000:.1f} ms |"
                f" {st['p90'] * 1000:.1f} ms | {st['p99'] * 1000:.1f} ms |"
                f" {st['max'] * 1000:.1f} ms |"
            )
    if single_lat:
        p99 = common.percentile(single_lat, 99)
        mean_tick = args.scan_interval / 2
        print()
        print(
            f"target: p99 <= 100 ms: {'met' if p99 <= 0.1 else 'missed'} ({p99 * 1000:.1f} ms);"
            f" mean {statistics.fmean(single_lat) * 1000:.1f} ms vs the tick-only mean of"
            f" {mean_tick:.1f} s (analytical; measured, scaled:"
            f" {statistics.fmean(tick_lat) * scale if tick_lat else float('nan'):.2f} s):"
            f" {mean_tick / statistics.fmean(single_lat):.0f}x faster"
        )


if __name__ == "__main__":
    main()
