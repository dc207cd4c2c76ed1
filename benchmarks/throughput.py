"""Benchmark: builds completed per second by the master end to end, durable (issue 6).

Processes (same machine, same clock):

* a throwaway PostgreSQL with fsync on and ``synchronous_commit = on`` while measuring
  (the data is loaded with ``synchronous_commit = off``, then a CHECKPOINT);
* the *recording farm* (``benchmarks/_common.py farm``): ``--builders`` slavesim builders
  whose builds last ``--build-time`` s, pinned to ``--builders-cpu``; it logs the arrival
  time of every ``build()`` call and the moment each build ends on its builder;
* this process, pinned to ``--master-cpu``: the whole master as in production
  (:class:`~buildmaster.service.BuildmasterService` with ``--dsn``: a pool of 8 database
  connections, the web server with the librarian storing files on disk with fsync, the
  master started as a service with the given scan interval).

The master and the farm tune their garbage collectors as ``twistd buildmaster`` and
``twistd slavesim`` do (:mod:`buildmaster.gctuning`; ``--default-gc``: Python's settings),
and each window reports the master's collector pauses.

Each build has its own source package and ``.dsc`` (downloaded by the builder from the
librarian at dispatch); every builder has the chroot already, and the librarian's content
store has all its directories, as one holding millions of files has (steady state;
``--fresh-store``: an empty store, where most uploads also make their directory). A finished
build is collected (log gzipped, ``.deb`` and ``.changes`` fetched, SHA-1 checked, stored in
the librarian, linked, build FULLYBUILT), cleaned, and the builder gets its next job.

For every scan interval of ``--intervals``: warm-up, then a ``--window`` s measurement:

* completed builds per second: builds with ``date_finished`` in the window (database);
* WAITING -> next ``build()``: from the moment the master's scan saw the builder WAITING
  (``buildmaster.scan.collect.collect`` starts: timestamps of a few master methods, wrapped in this process
  only) to the arrival of the builder's next ``build()`` call (recording farm), with a
  breakdown (results stored, cleaned, job claimed, build() sent);
* the builders' side: from the end of a build on its builder to the master seeing it, and
  to the builder's next ``build()`` (its idle time: what the farm loses per build);
* the builders' downloads of their sources inside ``ensurepresent`` (until the librarian
  gets the GET, then until the answer), and the round trip of an ``ensurepresent`` answered
  from the builder's cache (:func:`download_steps`);
* CPU: this process (main thread = the reactor, other threads = the librarian's thread
  pool), PostgreSQL, the builders; the master's RSS.

With ``--api-readers RATE``, every scan interval is measured twice, in windows of the same
length one after the other, once with ``benchmarks/api_readers.py`` reading the operator
API at RATE requests per second (a process of its own, on the builders' CPU) and once
without; which comes first alternates from one interval to the next (so give the same
interval several times: ``--intervals 0.5,0.5,0.5,0.5``). The summary then compares the
builds per second of each pair. With ``--api-process`` the readers ask a web-only process
(``twistd buildmaster --web-only``, on ``--api-cpu``, the builders' CPU by default) on the
same database and files directory instead of the scanning master, as a farm that keeps the
API off its scanning master does (docs/deployment.md); its CPU per read is reported.
``--api-nice N`` runs that process at niceness N (as ``packaging/systemd/buildmaster-web.service``
does with ``Nice=10``), ``--api-batch`` under ``SCHED_BATCH``. The readers' window starts
once they have their first list of builds and send (their start-up is not the API's cost).

Then, with a profiler on the reactor thread (``--profiler cprofile`` or ``pyinstrument``), a
``--profile`` s window: where the master's CPU goes per completed build.

    python benchmarks/throughput.py [--builders 500] [--intervals 0.2,0.5,1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from twisted.internet import threads
from twisted.internet.task import LoopingCall


async def finished_between(db: Any, start: float, end: float) -> int:
    rows = await db.query(
        "SELECT count(*) FROM build WHERE date_finished >= %s AND date_finished < %s",
        (
            datetime.datetime.fromtimestamp(start, datetime.UTC),
            datetime.datetime.fromtimestamp(end, datetime.UTC),
        ),
    )
    return int(rows[0][0])


async def waiting_jobs(db: Any) -> int:
    rows = await db.query("SELECT count(*) FROM buildqueue WHERE status = 0")
    return int(rows[0][0])


def farm_times(calls: list[dict[str, Any]], result: str) -> dict[str, list[float]]:
    """Per builder, when the recording farm logged ``result`` (a build() accepted:
    ``"BuilderStatus.BUILDING"``; a build ended: ``"WAITING"``)."""
    times: dict[str, list[float]] = defaultdict(list)
    for call in calls:
        if call["result"] == result:
            times[call["builder"]].append(call["t"])
    return times


def waiting_to_next(
    trace: common.Trace, calls: list[dict[str, Any]], start: float, end: float
) -> dict[str, list[float]]:
    """For every WAITING seen in [start, end): the time to each later step on that builder."""
    arrivals = farm_times(calls, "BuilderStatus.BUILDING")
    per_builder: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kind, key, t in trace.events:
        per_builder[key][kind].append(t)
    # times from "seen WAITING" to each milestone (cumulative: the steps may overlap, e.g.
    # files and log stored concurrently, or clean() while the build is finished)
    steps: dict[str, list[float]] = {
        "seen WAITING -> next build() arrives": [],
        "seen WAITING -> results (.deb, .changes, log) stored": [],
        "seen WAITING -> build finished in the database": [],
        "seen WAITING -> builder cleaned": [],
        "seen WAITING -> next job claimed": [],
        "seen WAITING -> its files on the builder (ensurepresent)": [],
        "seen WAITING -> next build() sent": [],
    }

    def after(times: list[float], t: float) -> float | None:
        return next((x for x in times if x > t), None)

    for builder, kinds in per_builder.items():
        for seen in kinds.get("collect", []):
            if not start <= seen < end:
                continue
            arrival = after(sorted(arrivals.get(builder, [])), seen)
            if arrival is None:
                continue
            steps["seen WAITING -> next build() arrives"].append(arrival - seen)
            sent = after(kinds.get("sent", []), seen)
            if sent is None or sent > arrival:
                continue
            stored = [t for t in kinds.get("file_stored", []) + kinds.get("log_stored", [])]
            stored = [t for t in stored if seen < t < sent]
            milestones = [
                max(stored) if stored else None,
                after(kinds.get("finished", []), seen),
                after(kinds.get("cleaned", []), seen),
                after(kinds.get("claimed", []), seen),
                after(kinds.get("ensured", []), seen),
                sent,
            ]
            for name, when in zip(list(steps)[1:], milestones, strict=True):
                if when is not None and when <= arrival:
                    steps[name].append(when - seen)
    return steps


def builder_side(
    trace: common.Trace, calls: list[dict[str, Any]], start: float, end: float
) -> dict[str, list[float]]:
    """For every build that finished on its builder in [start, end): how long the builder
    waited for the master to see it WAITING, and to send its next build (its idle time)."""
    arrivals = farm_times(calls, "BuilderStatus.BUILDING")
    finishes = farm_times(calls, "WAITING")
    seen: dict[str, list[float]] = defaultdict(list)
    for kind, key, t in trace.events:
        if kind == "collect":
            seen[key].append(t)
    steps: dict[str, list[float]] = {
        "builder WAITING -> master sees it": [],
        "builder WAITING -> next build() arrives (the builder's idle time)": [],
    }
    for builder, times in finishes.items():
        starts = sorted(arrivals.get(builder, []))
        looks = sorted(seen.get(builder, []))
        for t in times:
            if not start <= t < end:
                continue
            arrival = next((x for x in starts if x > t), None)
            look = next((x for x in looks if x > t), None)
            if arrival is None or look is None or look > arrival:
                continue
            steps["builder WAITING -> master sees it"].append(look - t)
            steps["builder WAITING -> next build() arrives (the builder's idle time)"].append(
                arrival - t
            )
    return steps


def grow_store_tree(root: Path) -> int:
    """Make every directory of the librarian's content store under ``root``, as a store
    holding a few million files has them; returns how many. In a fresh store most uploads
    also make their directory, which costs one more ``fsync`` (of its parent)."""
    from buildmaster.librarian.storage import ContentStore

    store = ContentStore(root)
    leaves = 16**4
    for prefix in range(leaves):
        store.path_for(f"{prefix:04x}".ljust(64, "0")).parent.mkdir(parents=True, exist_ok=True)
    return leaves


def ensure_key(client: Any, sha1: str, url: str | None, *args: Any, **kw: Any) -> Any:
    """An ``ensurepresent`` call's key in the trace: the builder and the URL."""
    return (client.url, url)


def download_steps(trace: common.Trace, start: float, end: float) -> dict[str, list[float]]:
    """For every ``ensurepresent`` sent in [start, end): when the librarian got the
    builder's GET for its URL and when the answer came; or, with no GET in between (the
    file was in the builder's cache: the chroot), the round trip, one XML-RPC call and
    nothing else."""
    events: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kind, key, t in trace.events:
        if kind in ("ensure sent", "ensure answered", "get"):
            events[kind][key].append(t)
    steps: dict[str, list[float]] = {
        "ensurepresent sent -> the librarian gets the builder's GET": [],
        "the GET -> ensurepresent answered (served, stored, answered)": [],
        "ensurepresent answered from the builder's cache (one round trip)": [],
    }
    first_get, then_answer, cached = steps.values()
    for key, times in events["ensure sent"].items():
        if key is None:
            continue
        gets = events["get"].get(urlsplit(key[1]).path if key[1] else None, [])
        answers = events["ensure answered"].get(key, [])
        for sent in times:
            answered = next((t for t in answers if t > sent), None)
            if not start <= sent < end or answered is None:
                continue
            got = next((t for t in gets if sent < t < answered), None)
            if got is None:
                cached.append(answered - sent)
            else:
                first_get.append(got - sent)
                then_answer.append(answered - got)
    return steps


PG_STATS_SQL = """
SELECT calls, total_plan_time, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_plan_time + total_exec_time DESC LIMIT 15
"""


def print_pg_stats(window: dict[str, Any]) -> None:
    done = max(window["completed"], 1)
    rows = window.get("pg_statements") or []
    print("  PostgreSQL's time per completed build, by statement (pg_stat_statements):")
    print(
        "  | calls per build | plan ms per call | execute ms per call | ms per build | statement |"
    )
    print("  |---|---|---|---|---|")
    for calls, plan, execute, query in rows:
        per_build = (plan + execute) / done
        print(
            f"  | {calls / done:.2f} | {plan / max(calls, 1):.3f} | {execute / max(calls, 1):.3f}"
            f" | {per_build:.3f} | `{query}` |"
        )


def unprepare_statements() -> None:
    """The ``--no-prepared`` diagnostic: ``prepared=True`` is ignored from now on."""
    from buildmaster.store import Database

    for name in ("query", "execute"):
        original = getattr(Database, name)

        def unprepared(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
            kw.pop("prepared", None)
            return _original(self, *args, **kw)

        setattr(Database, name, unprepared)


async def measure_window(
    reactor: Any, ctx: dict[str, Any], seconds: float, label: str
) -> dict[str, Any]:
    service, cluster, farm_pid = ctx["service"], ctx["cluster"], ctx["farm_pid"]
    threads0, pg0, farm0 = (
        common.thread_cpu(),
        common.postgres_cpu(cluster),
        common.cpu_seconds(farm_pid),
    )
    rss0 = common.rss_mib()
    memory0 = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    counts0 = ctx["counter"].snapshot()
    ctx["gc"].snapshot()
    ctx["sql"].reset()
    if ctx.get("pg_stats"):
        await service.db.query("SELECT pg_stat_statements_reset()")
    # the librarian's thread pool (its own since 892d619; the reactor's before)
    pool = getattr(service.librarian, "_pool", None) or reactor.getThreadPool()
    samples: list[tuple[int, int, int, int, int]] = []
    start = time.time()
    dry_at = None
    next_check = start + 1
    while time.time() - start < seconds:
        await common.sleep(reactor, 0.1)
        connections = service.db._connections
        team = pool._team.statistics()
        waiting = [len(c.lock.waiting) for c in connections]
        free = sum(1 for c in connections if not c.lock.locked)
        samples.append(
            (
                len(connections) - free,
                sum(waiting),
                team.busyWorkerCount,
                team.backloggedWorkCount,
                # queries queued behind a busy connection while another one is free
                sum(waiting) if free else 0,
            )
        )
        if time.time() >= next_check:
            next_check += 1
            if dry_at is None and await waiting_jobs(service.db) == 0:
                dry_at = time.time()
    end = time.time()
    if memory0 is not None:
        growth = tracemalloc.take_snapshot().compare_to(memory0, "lineno")
        print("  memory growth during the window, by allocation site (tracemalloc):")
        for stat in growth[:12]:
            print(f"    {stat}")
    counts1 = ctx["counter"].snapshot()
    gc_pauses = ctx["gc"].snapshot()
    threads1 = common.thread_cpu()
    result = {
        "label": label,
        "start": start,
        "end": end,
        "main_cpu": threads1["main"] - threads0["main"],
        "thread_cpu": threads1["others"] - threads0["others"],
        "pg_cpu": max(0.0, common.postgres_cpu(cluster) - pg0),
        "farm_cpu": common.cpu_seconds(farm_pid) - farm0,
        "rss": (rss0, common.rss_mib()),
        "dry_at": dry_at,
        "load": common.loadavg(),
        "calls": {k: counts1[k] - counts0.get(k, 0) for k in counts1},
        "gc": gc_pauses,
        "db_busy": sum(x[0] for x in samples) / len(samples),
        "db_waiting": sum(x[1] for x in samples) / len(samples),
        "db_waiting_max": max(x[1] for x in samples),
        "threads_busy": sum(x[2] for x in samples) / len(samples),
        "threads_backlog": sum(x[3] for x in samples) / len(samples),
        "threads_backlog_max": max(x[3] for x in samples),
        "stuck": sum(x[4] for x in samples) / len(samples),
        "stuck_share": sum(1 for x in samples if x[4]) / len(samples),
    }
    result["completed"] = await finished_between(service.db, start, end)
    if ctx.get("pg_stats"):
        result["pg_statements"] = await service.db.query(PG_STATS_SQL)
    # the rate while the queue had jobs (after it ran dry, the farm idles)
    busy_end = dry_at if dry_at is not None else end
    result["rate"] = await finished_between(service.db, start, busy_end) / (busy_end - start)
    return result


async def run(reactor: Any, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:

    from buildmaster.builderclient import BuilderClient
    from buildmaster.config import MasterConfig
    from buildmaster.gctuning import tune_garbage_collection
    from buildmaster.httpclient import HTTPClient
    from buildmaster.librarian import Librarian
    from buildmaster.librarian.resource import LibrarianResource
    from buildmaster.scan import collect as collect_step
    from buildmaster.scan import dispatch as dispatch_step
    from buildmaster.scan.collect import ResultCollector
    from buildmaster.service import BuildmasterService, ServiceSettings
    from buildmaster.store import Database, Store
    from buildmaster.store.jobs import JobQueries

    workdir, listing = ctx["dir"], ctx["listing"]
    state = workdir / "state"
    state.mkdir()
    if not args.fresh_store:
        t = time.monotonic()
        made = await threads.deferToThread(grow_store_tree, state / "librarian")
        print(f"librarian: {made} leaf directories made ({time.monotonic() - t:.1f} s)", flush=True)
    intervals = [float(x) for x in args.intervals.split(",")]

    # -- the world (loaded with synchronous_commit off; durable again before measuring)
    db = Database(reactor, ctx["dsn"], size=8)
    await db.connect()
    try:
        await db.execute("ALTER SYSTEM SET synchronous_commit = off")
        await db.execute("SELECT pg_reload_conf()")
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
        sources = await common.create_sources(store, librarian, data.hoary, args.builds, batch=50)
        builds = await common.create_builds(store, db, sources, data.hoary_amd64, data.primary)
        print(
            f"{len(builds)} builds ready ({time.monotonic() - t:.0f} s); load {common.loadavg()}",
            flush=True,
        )
        if args.synchronous_commit == "on":
            await db.execute("ALTER SYSTEM RESET synchronous_commit")
        else:  # a diagnostic: how much do the commits' WAL flushes cost?
            await db.execute("ALTER SYSTEM SET synchronous_commit = off")
        await db.execute("SELECT pg_reload_conf()")
        await db.execute("CHECKPOINT")
        rows = await db.query(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
        )
        print(f"PostgreSQL: fsync={rows[0][0]}, synchronous_commit={rows[0][1]}", flush=True)
    finally:
        await db.close()

    trace = common.Trace()
    names = {b["url"].rstrip("/") + "/": b["name"] for b in listing}
    if not args.no_trace:
        trace.on_call(collect_step, "collect", "collect", lambda s, *a: s.builder.name)
        trace.on_return(
            ResultCollector, "store_file", "file_stored", lambda r, c, *a: names.get(c._client.url)
        )
        trace.on_return(
            ResultCollector, "store_log", "log_stored", lambda r, c, *a: names.get(c._client.url)
        )
        trace.on_return(JobQueries, "finish", "finished", lambda r, self, job, b, *a, **k: b.name)
        # the clean() of a collection (collect_step.clean_and_next calls it by this name)
        trace.on_return(collect_step, "clean", "cleaned", lambda r, s, *a: s.builder.name)
        trace.on_return(
            JobQueries,
            "claim_next_for_dispatch",
            "claimed",
            lambda r, self, b, *a, **k: b.name if r else None,
        )
        trace.on_return(
            dispatch_step, "ensure_files", "ensured", lambda r, s, *a, **k: s.builder.name
        )
        trace.on_call(BuilderClient, "build", "sent", lambda self, *a: names.get(self.url))
        trace.on_call(BuilderClient, "ensurepresent", "ensure sent", ensure_key)
        trace.on_return(
            BuilderClient,
            "ensurepresent",
            "ensure answered",
            lambda r, *a, **k: ensure_key(*a, **k),
        )
        trace.on_call(
            LibrarianResource, "_serve", "get", lambda self, request, head: request.path.decode()
        )
    if args.no_prepared:
        unprepare_statements()
    counter = common.CallCounter()
    common.count_database_calls(counter)
    counter.count(BuilderClient, "_call", "XML-RPC calls")
    counter.count(BuilderClient, "status", "status polls")
    counter.count(HTTPClient, "_connect", "new connections to builders")
    counter.count(BuilderClient, "fetch_file", "file fetches")
    counter.count(Librarian, "new_upload", "librarian uploads")
    ctx["counter"] = counter
    gc_pauses = common.GCPauses()
    gc_pauses.install()
    ctx["gc"] = gc_pauses
    if not args.default_gc:
        # as twistd buildmaster does (buildmaster.tap); the objects frozen here include the
        # benchmark's own (the builds it queued), which a real master does not hold
        tune_garbage_collection(reactor)
    sql_stats = common.SQLStats()
    if args.sql_stats:
        sql_stats.install()
    ctx["sql"] = sql_stats
    results: dict[str, Any] = {"windows": [], "trace": trace, "no_trace": args.no_trace}
    queued = 0
    # builds for each interval in proportion to the time it runs (the last one also profiles)
    windows = 2 if args.api_readers else 1
    weights = [args.warmup + windows * args.window for _ in intervals]
    weights[-1] += max(args.profile, 0)
    shares = [int(len(builds) * w / sum(weights)) for w in weights]
    try:
        for n, interval in enumerate(intervals):
            service = BuildmasterService(
                reactor,
                ServiceSettings(
                    state_dir=state,
                    dsn=ctx["dsn"],
                    port="tcp:0:interface=127.0.0.1",
                    master=MasterConfig(
                        scan_interval=interval, max_collections=args.max_collections
                    ),
                    pool_size=args.pool_size,
                    api_pool_size=args.api_pool_size,
                ),
            )
            await common.start_service(reactor, service)
            ctx["service"] = service
            pinning = LoopingCall(common.pin_other_threads, args.threads_cpu)
            pinning.clock = reactor
            if args.threads_cpu:
                pinning.start(0.5)
            assert service.librarian is not None and service.master is not None
            assert service.db is not None
            if args.no_record_batching:
                # a diagnostic: every finished upload is recorded by its own statement
                service.librarian.records._batcher._max_batch = 1
            gate = getattr(service.master, "claims", None)
            if args.no_claim_gate and gate is not None:
                # a diagnostic: every idle builder claims at once (SKIP LOCKED keeps it safe)
                gate._enabled = lambda: False
            try:
                master = service.master
                deadline = time.monotonic() + 60
                while len([w for w in master.workers.values() if w.last_status is not None]) < len(
                    listing
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the master did not see every builder")
                    await common.sleep(reactor, 0.2)
                if n == 0:
                    await common.put_chroot_on_every_builder(service)
                if n == 0 and args.api_process and args.api_readers:
                    # after the first master: the farm's secret is the one it offered
                    ctx["api_url"] = await start_web_process(reactor, args, ctx, state)
                batch = (
                    builds[queued : queued + shares[n]]
                    if n + 1 < len(intervals)
                    else builds[queued:]
                )
                queued += len(batch)
                await service.db.query(common.QUEUE_SQL + " RETURNING id", (batch,))
                print(
                    f"scan interval {interval:g} s: queued {len(batch)} builds;"
                    f" warming up {args.warmup:g} s",
                    flush=True,
                )
                await common.sleep(reactor, args.warmup)
                readers_first = n % 2 == 1
                for with_readers in [readers_first, not readers_first][:windows]:
                    await measure_and_print(reactor, args, ctx, results, interval, with_readers)
                if n + 1 == len(intervals) and args.profile > 0:
                    profiler = common.Profile(args.profiler)
                    profiler.start()
                    try:
                        prof = await measure_window(reactor, ctx, args.profile, "profiled")
                    finally:
                        profiler.stop()
                    prof["profiler"] = profiler
                    results["profile"] = prof
            finally:
                if pinning.running:
                    pinning.stop()
                await common.stop_service(reactor, service)
    finally:
        trace.restore()
        counter.restore()
        gc_pauses.uninstall()
        sql_stats.restore()
    return results


async def measure_and_print(
    reactor: Any,
    args: argparse.Namespace,
    ctx: dict[str, Any],
    results: dict[str, Any],
    interval: float,
    with_readers: bool,
) -> None:
    """One window (with the API's readers running, or not), printed as it ends."""
    service = ctx["service"]
    readers = None
    label = f"interval {interval:g} s" + (" with API readers" if with_readers else "")
    web_pid = ctx.get("api_pid")
    web_cpu0 = common.cpu_seconds(web_pid) if web_pid else 0.0
    if with_readers:
        out = ctx["dir"] / f"readers-{len(results['windows'])}.json"
        ready = out.with_suffix(".ready")
        readers = ctx["children"].start(
            [
                common.PYTHON,
                str(Path(__file__).resolve().parent / "api_readers.py"),
                "--url",
                ctx.get("api_url") or f"http://127.0.0.1:{service.web.getHost().port}",
                "--rate",
                str(args.api_readers),
                "--seconds",
                str(args.window),
                "--out",
                str(out),
                "--ready",
                str(ready),
            ],
            cpus=args.builders_cpu,
        )
        # the window starts once they send: their start-up is not the API's cost
        deadline = time.monotonic() + 60
        while not ready.exists() and readers.poll() is None and time.monotonic() < deadline:
            await common.sleep(reactor, 0.05)
    window = await measure_window(reactor, ctx, args.window, label)
    window["interval"] = interval
    window["readers"] = None
    if readers is not None:
        while readers.poll() is None:
            await common.sleep(reactor, 0.2)
        window["readers"] = json.loads(out.read_text()) if out.exists() else {"failed": "no output"}
    window["web_cpu"] = common.cpu_seconds(web_pid) - web_cpu0 if web_pid else None
    results["windows"].append(window)
    rate = window["rate"]

    def share(key: str, w: dict[str, Any] = window) -> str:
        return f"{w[key] / args.window:.0%}"

    print(
        f"  {window['completed']} builds in {window['end'] - window['start']:.0f} s:"
        f" {rate:.1f}/s; master CPU: reactor thread {share('main_cpu')}, other"
        f" threads {share('thread_cpu')}; PostgreSQL {share('pg_cpu')};"
        f" builders {share('farm_cpu')};"
        f" RSS {window['rss'][0]:.0f} -> {window['rss'][1]:.0f} MiB;"
        f" load {window['load']}"
        + (
            f"; QUEUE RAN DRY after {window['dry_at'] - window['start']:.0f} s"
            " (rate counted until then; use more --builds)"
            if window["dry_at"]
            else ""
        ),
        flush=True,
    )
    done = max(window["completed"], 1)
    calls = ", ".join(f"{v / done:.1f} {k}" for k, v in window["calls"].items())
    print(
        f"  per completed build: {calls}\n  database pool"
        f" ({len(service.db._connections)} connections): on average"
        f" {window['db_busy']:.1f} busy, {window['db_waiting']:.1f} queries waiting"
        " (max"
        f" {window['db_waiting_max']}); while a connection was free,"
        f" {window['stuck']:.1f} queries"
        " waited for a busy one on average"
        f" ({window['stuck_share']:.0%} of the samples);"
        f" librarian's thread pool: {window['threads_busy']:.1f} busy,"
        f" {window['threads_backlog']:.1f} tasks waiting"
        f" (max {window['threads_backlog_max']})\n"
        f"  master's {common.describe_gc_pauses(window['gc'])}",
        flush=True,
    )
    if args.pg_stats:
        print_pg_stats(window)
    if args.sql_stats:
        print("  statements per completed build, by kind, and their latency:")
        for line in ctx["sql"].report(done):
            print(f"    {line}")
    if window["readers"] is not None:
        r = window["readers"]
        latency = ", ".join(
            f"{kind} p50 {v['p50'] * 1000:.0f} / p99 {v['p99'] * 1000:.0f} ms"
            for kind, v in r.get("latency", {}).items()
        )
        print(
            f"  API readers: {r.get('answered')} answered of {r.get('sent')} sent"
            f" ({r.get('rate', 0):.0f}/s), {r.get('skipped')} skipped, failed"
            f" {r.get('failed')}; readers' CPU {r.get('cpu', 0):.1f} s; {latency}",
            flush=True,
        )
    if window["web_cpu"] is not None:
        answered = (window["readers"] or {}).get("answered") or 0
        per_read = f", {window['web_cpu'] / answered * 1000:.2f} ms per read" if answered else ""
        print(
            f"  web-only process: CPU {window['web_cpu'] / args.window:.0%}{per_read}",
            flush=True,
        )


async def start_web_process(
    reactor: Any, args: argparse.Namespace, ctx: dict[str, Any], state: Path
) -> str:
    """``twistd buildmaster --web-only`` on the benchmark's database and files directory,
    pinned to ``--api-cpu``; its base URL once its /readyz answers 200."""
    from buildmaster.httpclient import HTTPClient
    from buildmaster.store.cluster import free_port

    port = free_port()
    nice = ["nice", "-n", str(args.api_nice)] if args.api_nice else []
    if args.api_batch:
        nice = ["chrt", "--batch", "0", *nice]
    process = ctx["children"].start(
        [*nice, common.TWISTD, "-n", "--pidfile=", "--logfile", str(ctx["dir"] / "web.log")]
        + ["buildmaster", "--web-only", "--dsn", ctx["dsn"], "--port", str(port)]
        + ["--files-dir", str(state / "librarian"), "--state-dir", str(ctx["dir"] / "web")],
        cpus=args.api_cpu if args.api_cpu is not None else args.builders_cpu,
        cwd=ctx["dir"],
    )
    ctx["api_pid"] = process.pid
    url = f"http://127.0.0.1:{port}"
    http = HTTPClient(reactor)
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the web-only process ended: see {ctx['dir'] / 'web.log'}")
            try:
                answer = await http.request(b"GET", url + "/readyz", timeout=5.0)
                if answer.status == 200:
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the web-only process was not ready within 120 s")
            await common.sleep(reactor, 0.5)
    finally:
        http.close_idle()
    how = " ".join(nice) or "the same priority as the others"
    print(f"web-only process (pid {process.pid}, {how}) ready at {url}", flush=True)
    return url


def main() -> None:
    import attrs

    from buildmaster.config import MasterConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builders", type=int, default=500)
    parser.add_argument("--build-time", type=float, default=1.0)
    parser.add_argument(
        "--build-time-spread",
        type=float,
        default=0.0,
        help="builds last from --build-time to --build-time + this (by package name)",
    )
    parser.add_argument(
        "--builds", type=int, default=20_000, help="builds to queue (all intervals together)"
    )
    parser.add_argument(
        "--intervals", default="0.2,0.5,1", help="scan intervals to try, comma-separated"
    )
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=40.0)
    parser.add_argument("--profile", type=float, default=15.0, help="seconds profiled (0: none)")
    parser.add_argument("--top", type=int, default=30, help="functions listed from the profile")
    parser.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    parser.add_argument(
        "--profile-out", help="also write the cprofile stats to this file (python -m pstats)"
    )
    parser.add_argument("--pool-size", type=int, default=8, help="database connections")
    parser.add_argument(
        "--api-pool-size", type=int, default=2, help="the operator API's own database connections"
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="off: commits do not wait for the WAL flush (a diagnostic; not durable)",
    )
    parser.add_argument(
        "--sql-stats", action="store_true", help="list the statements per build and their latency"
    )
    parser.add_argument(
        "--no-record-batching",
        action="store_true",
        help="a diagnostic: record each finished upload with its own statement",
    )
    parser.add_argument(
        "--no-prepared",
        action="store_true",
        help="a diagnostic: run every statement unprepared (parsed and planned each time)",
    )
    parser.add_argument(
        "--pg-stats",
        action="store_true",
        help="list PostgreSQL's planning and execution time per statement (pg_stat_statements,"
        " which itself costs a little)",
    )
    parser.add_argument(
        "--max-collections",
        type=int,
        default=attrs.fields(MasterConfig).max_collections.default,
        help="finished builds the master collects at once (0: no limit; default: the master's)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="a diagnostic: leave the garbage collectors of the master and the farm as"
        " Python sets them (twistd buildmaster and twistd slavesim tune them)",
    )
    parser.add_argument(
        "--no-claim-gate",
        action="store_true",
        help="a diagnostic: switch the master's one-claim-per-kind gate off",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="report where memory grew during each window (slows the master down)",
    )
    parser.add_argument(
        "--no-trace",
        action="store_true",
        help="do not time the steps after WAITING (their records grow the process by ~1 KB"
        " per build; use it when watching the master's memory)",
    )
    parser.add_argument(
        "--fresh-store",
        action="store_true",
        help="start the librarian's content store empty (by default its directories exist,"
        " as in a store of millions of files)",
    )
    parser.add_argument(
        "--api-readers",
        type=float,
        default=0.0,
        help="measure each interval with and without this many operator API reads per second"
        " (benchmarks/api_readers.py, on the builders' CPU)",
    )
    parser.add_argument(
        "--api-process",
        action="store_true",
        help="with --api-readers: the readers ask a web-only process (twistd buildmaster"
        " --web-only on the same database) instead of the scanning master",
    )
    parser.add_argument(
        "--api-cpu",
        default=None,
        help="CPU(s) for the web-only process of --api-process (default: --builders-cpu)",
    )
    parser.add_argument(
        "--api-nice",
        type=int,
        default=0,
        help="run the web-only process of --api-process at this niceness (0: as the others)",
    )
    parser.add_argument(
        "--api-batch",
        action="store_true",
        help="run the web-only process of --api-process under SCHED_BATCH (its wake-ups do"
        " not preempt the farm's processes)",
    )
    parser.add_argument("--log", help="write the master's log to this file")
    parser.add_argument("--master-cpu", default="0", help="CPU(s) for this process ('' = any)")
    parser.add_argument("--builders-cpu", default="1", help="CPU(s) for the builders ('' = any)")
    parser.add_argument(
        "--threads-cpu",
        default="",
        help="a diagnostic: CPU(s) for this process's threads other than the reactor's"
        " (the librarian's pool), re-applied every 0.5 s ('' = as the process)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    common.log_to(args.log)
    if args.tracemalloc:
        tracemalloc.start()
    common.raise_file_limit(args.builders + 200)
    print(common.machine_line())
    print(
        f"{args.builders} builders (recording farm, builds of {args.build_time:g} s) on CPU"
        f" {args.builders_cpu or 'any'}; master (this process) on CPU {args.master_cpu or 'any'};"
        f" PostgreSQL fsync on, unpinned; {args.warmup:g} s warm-up, {args.window:g} s window",
        flush=True,
    )
    with (
        common.sigterm_as_exit(),
        tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp,
        common.Children() as children,
    ):
        workdir = Path(tmp)
        settings = (
            {
                "shared_preload_libraries": "'pg_stat_statements'",
                "pg_stat_statements.track_planning": "on",
                # the statements of triggers and functions too, each under its own text
                "pg_stat_statements.track": "all",
            }
            if args.pg_stats
            else {}
        )
        cluster = common.start_cluster(fsync=True, settings=settings)
        try:
            dsn = common.create_database(cluster)
            if args.pg_stats:
                common.run_autocommit(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            farm, listing, record = common.start_recording_farm(
                children,
                workdir,
                args.builders,
                args.builders_cpu,
                build_time=args.build_time,
                spread=args.build_time_spread,
                default_gc=args.default_gc,
            )
            common.pin_self(args.master_cpu)
            ctx = {
                "dir": workdir,
                "dsn": dsn,
                "listing": listing,
                "cluster": cluster,
                "farm_pid": farm.pid,
                "pg_stats": args.pg_stats,
                "children": children,
            }
            results = common.run_async(lambda reactor: run(reactor, args, ctx))
            calls = common.read_build_calls(record)
        finally:
            children.stop_all()
            cluster.stop()

    print()
    print(f"load average at the end: {common.loadavg()}")
    print(
        "| scan interval | completed builds/s | WAITING -> next build() p50 / p99 / max (ms) |"
        " master CPU (reactor + threads) | master CPU ms per build | PostgreSQL CPU |"
        " builders' CPU | master RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for w in results["windows"]:
        seconds = w["end"] - w["start"]
        rate = w["rate"]
        steps = waiting_to_next(results["trace"], calls, w["start"], w["end"])
        lat = common.summary(steps["seen WAITING -> next build() arrives"])
        cpu = w["main_cpu"] + w["thread_cpu"]
        print(
            f"| {w['interval']:g} s | {rate:.1f} | {lat['p50'] * 1000:.0f} /"
            f" {lat['p99'] * 1000:.0f} /"
            f" {lat['max'] * 1000:.0f} (n={lat['n']}) | {w['main_cpu'] / seconds:.0%} +"
            f" {w['thread_cpu'] / seconds:.0%} |"
            f" {cpu / max(w['completed'], 1) * 1000:.1f} | {w['pg_cpu'] / seconds:.0%} |"
            f" {w['farm_cpu'] / seconds:.0%} | {w['rss'][1]:.0f} MiB |"
        )
    pairs = [
        (results["windows"][i], results["windows"][i + 1])
        for i in range(0, len(results["windows"]) - 1, 2)
        if args.api_readers
    ]
    if pairs:
        ratios = []
        print(
            "\n| pair | without readers builds/s | with readers builds/s | ratio | readers' answers/s |"
        )
        print("|---|---|---|---|---|")
        for i, (a, b) in enumerate(pairs):
            without, with_ = (a, b) if a["readers"] is None else (b, a)
            ratio = with_["rate"] / without["rate"] if without["rate"] else float("nan")
            ratios.append(ratio)
            print(
                f"| {i + 1} | {without['rate']:.1f} | {with_['rate']:.1f} | {ratio:.3f} |"
                f" {(with_['readers'] or {}).get('rate', 0):.0f} |"
            )
        median = statistics.median(ratios)
        print(
            f"target: {args.api_readers:g} API reads/s cost at most 10 % of the builds per second:"
            f" median ratio {median:.3f} over {len(ratios)} pairs:"
            f" {'met' if median >= 0.9 else 'missed'}"
        )
    for w in results["windows"]:
        print(f"\nbreakdown, scan interval {w['interval']:g} s (ms):")
        steps = waiting_to_next(results["trace"], calls, w["start"], w["end"])
        if results.get("no_trace"):
            print("  (not timed: --no-trace)")
        elif not any(values for name, values in list(steps.items())[1:]):
            print(
                "  (no steps: the traced master methods were not all called; has the code changed?)"
            )
        for name, values in steps.items():
            if values:
                print(f"  {name}: {common.fmt_quantiles(values)}")
        for name, values in builder_side(results["trace"], calls, w["start"], w["end"]).items():
            if values:
                print(f"  {name}: {common.fmt_quantiles(values)}")
        for name, values in download_steps(results["trace"], w["start"], w["end"]).items():
            if values:
                print(f"  {name}: {common.fmt_quantiles(values)}")
    prof = results.get("profile")
    if prof:
        completed = max(prof["completed"], 1)
        print(
            f"\nprofile of the reactor thread ({args.profiler}, {args.profile:g} s at the last"
            f" interval, {prof['completed']} builds completed while profiling;"
            " see _common.Profile):"
        )
        total = prof["profiler"].print(completed, "build", args.top)
        if args.profile_out:
            prof["profiler"].dump(args.profile_out)
            print(f"profile written to {args.profile_out}")
        print(
            f"profiled: {total:.1f} s = {total / completed * 1000:.1f} ms per build"
            " (the profiler's own"
            " overhead included; unprofiled figures: see the table)"
        )


if __name__ == "__main__":
    main()
