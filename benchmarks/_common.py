"""Shared pieces of the master's benchmarks (scan, dispatch, candidate, throughput).

* the machine: CPU model, core count, load average; CPU time and RSS of a process;
* percentiles and one-line summaries;
* child processes that are always stopped (also on Ctrl-C, errors, or when this process is
  killed: they get SIGTERM from the kernel when their parent dies);
* a throwaway PostgreSQL cluster with a migrated database;
* simulated builders in a separate process: ``twistd slavesim``, or the *recording farm*
  (this file run as a script, see :func:`run_recording_farm`) that also writes one JSON line
  per ``build()`` call it receives, with the wall-clock time it arrived;
* the seed's world (sample data, a chroot) and builders registered from a slavesim list.

Run as a script it is the recording farm::

    python benchmarks/_common.py farm --count 500 --build-time 1 --list L --record R
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
TWISTD = str(Path(sys.executable).parent / "twistd")


# -- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> str:
    """The load averages, and the share of the last 10 s during which some runnable task was
    waiting for a CPU (Linux PSI), e.g. ``2.10 2.35 2.50, CPU pressure 35%``."""
    text = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/cpu").read_text().split()[1]  # "avg10=12.34"
        text += f", CPU pressure {float(some.split('=')[1]):.0f}%"
    return text


def code_version() -> str:
    """The commit measured, and whether the master's code had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "buildmaster", "slavesim"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine_line() -> str:
    return (
        f"machine: nproc={os.cpu_count()}, CPU: {cpu_model()}, Python "
        f"{platform.python_version()}, load average {loadavg()}\ncode: {code_version()}"
    )


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    """This process's user + system CPU seconds (all threads), from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process: ``{"main": ..., "others": ...}``."""
    main = others = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(task.name) == os.getpid():
            main += seconds
        else:
            others += seconds
    return {"main": main, "others": others}


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pin_self(cpus: str | None) -> None:
    """Pin this process (all its threads, and children started later) to ``cpus``."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def pin_other_threads(cpus: str) -> None:
    """Pin every thread of this process but the main one to ``cpus``."""
    wanted = {int(c) for c in cpus.split(",")}
    main = os.getpid()
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != main:
            try:
                os.sched_setaffinity(int(tid), wanted)
            except OSError:
                pass  # gone since listed


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed * 2 + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else hard, hard)
        )


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def fmt_quantiles(values: Sequence[float], digits: int = 1) -> str:
    """``p50 .., p90 .., p99 .., max .. (n=..)`` in milliseconds, from values in seconds."""
    s = summary(values)
    return (
        ", ".join(f"{k} {s[k] * 1000:.{digits}f}" for k in ("p50", "p90", "p99", "max"))
        + f" (n={s['n']})"
    )


def fmt_ms(values: Sequence[float]) -> str:
    """``n=.. p50 .. p90 .. p99 .. max ..`` in milliseconds, from values in seconds."""
    s = summary(values)
    return (
        f"n={s['n']}, p50 {s['p50'] * 1000:.2f} ms, p90 {s['p90'] * 1000:.2f} ms, "
        f"p99 {s['p99'] * 1000:.2f} ms, min {s['min'] * 1000:.2f} ms, max {s['max'] * 1000:.2f} ms"
    )


# -- profiles ------------------------------------------------------------------------

#: cProfile functions by where they live: (category, substring of "file:function")
CATEGORIES = [
    ("database (txpostgres, psycopg2, store)", ("txpostgres", "psycopg2", "buildmaster/store/")),
    (
        "XML-RPC marshalling (xmlrpc.client, expat, rpcanswer)",
        ("xmlrpc/client.py", "pyexpat", "expat", "buildmaster/rpcanswer.py"),
    ),
    (
        "HTTP client to builders (httpclient, builderclient)",
        ("buildmaster/httpclient.py", "buildmaster/builderclient.py"),
    ),
    (
        "librarian (uploads, hashing, serving files)",
        ("buildmaster/librarian/", "_hashlib", "hashlib"),
    ),
    ("collecting results (collect, gzip)", ("buildmaster/scan/collect.py", "zlib")),
    ("protocol parsing (protocol.py)", ("buildmaster/protocol.py",)),
    (
        "scanner / master logic",
        (
            "buildmaster/scan/",
            "buildmaster/master.py",
            "buildmaster/policy.py",
            "buildmaster/buildargs.py",
            "buildmaster/logtails.py",
            "buildmaster/model.py",
            "buildmaster/transitions.py",
            "attr",
        ),
    ),
    ("twisted.web (serving the librarian, access log)", ("twisted/web/",)),
    ("logging (twisted.logger)", ("twisted/logger/", "twisted/python/log.py")),
    ("Deferreds and coroutines", ("twisted/internet/defer.py",)),
    (
        "reactor, sockets, threads (twisted.internet)",
        (
            "twisted/internet/",
            "twisted/python/",
            "socket",
            "select",
            "epoll",
            "{method 'send",
            "{method 'recv",
            "threading",
            "queue.py",
        ),
    ),
]


def _category(where: str) -> str | None:
    for name, needles in CATEGORIES:
        if any(n in where for n in needles):
            return name
    return None


def _cprofile_rows(stats: Any) -> list[tuple[float, str, str]]:
    """``(self seconds, "file:line(func)", category)`` from a ``pstats.Stats``.

    A built-in function that says nothing about its purpose (``isinstance``, ``list.append``,
    ``bytes.decode``...) is charged to the categories of its callers, in proportion to the
    time spent in it from each of them.
    """
    rows = []
    for (filename, line, func), (_, _, tottime, _, callers) in stats.stats.items():
        where = f"{filename}:{line}({func})"
        category = _category(where)
        if category is None and filename == "~" and callers:
            shares = {c: v[2] for c, v in callers.items()}
            total = sum(shares.values()) or 1.0
            for (cf, cl, cfunc), share in shares.items():
                caller = _category(f"{cf}:{cl}({cfunc})") or "other"
                rows.append((tottime * share / total, where, caller))
            continue
        rows.append((tottime, where, category or "other"))
    return rows


def _pyinstrument_rows(session: Any) -> list[tuple[float, str, str]]:
    """``(self seconds, where, category)`` from a pyinstrument session; the time the reactor
    spends waiting in ``epoll.poll`` is left out (it is idle, not work)."""
    rows = []
    stack = [(session.root_frame(), None)]
    while stack:
        frame, parent = stack.pop()
        if frame is None:
            continue
        children = [c for c in frame.children if not c.is_synthetic]
        own = sum(c.time for c in frame.children if c.is_synthetic)
        stack.extend((c, frame) for c in children)
        if own <= 0:
            continue
        where = f"{frame.file_path}:{frame.line_no}({frame.function})"
        builtin = not frame.file_path or frame.file_path.startswith("<")
        if builtin and parent is not None:
            if frame.function.rsplit(".", 1)[-1] == "poll" and parent.function == "doPoll":
                continue  # idle
            caller = f"{parent.file_path}:{parent.line_no}({parent.function})"
            where = f"{caller} -> {frame.function}"
            category = _category(f"{frame.function}") or _category(caller) or "other"
        else:
            category = _category(where) or "other"
        rows.append((own, where, category))
    return rows


class Profile:
    """A profile of this process's main (reactor) thread.

    * ``cprofile``: cProfile with a CPU-time clock (``time.thread_time``): exact call counts,
      but every function call pays the profiler's overhead, so call-heavy code (Deferred
      callbacks, small helpers) looks bigger than it is;
    * ``pyinstrument``: a sampling profiler (every 0.5 ms, wall clock; the time spent waiting
      in ``epoll`` is left out): lower overhead, shares closer to the truth, no call counts.
    """

    def __init__(self, kind: str = "cprofile") -> None:
        self.kind = kind
        self._profiler: Any = None

    def start(self) -> None:
        if self.kind == "pyinstrument":
            from pyinstrument import Profiler

            self._profiler = Profiler(interval=0.0005, async_mode="disabled")
            self._profiler.start()
        else:
            import cProfile

            self._profiler = cProfile.Profile(time.thread_time)
            self._profiler.enable()

    def stop(self) -> None:
        if self.kind == "pyinstrument":
            self._profiler.stop()
        else:
            self._profiler.disable()

    def dump(self, path: str) -> None:
        """Write the stats for ``python -m pstats`` (cprofile only)."""
        if self.kind != "cprofile":
            raise SystemExit("--profile-out needs --profiler cprofile")
        self._profiler.dump_stats(path)

    def rows(self) -> list[tuple[float, str, str]]:
        if self.kind == "pyinstrument":
            return _pyinstrument_rows(self._profiler.last_session)
        import pstats

        return _cprofile_rows(pstats.Stats(self._profiler))

    def print(self, per: float, per_label: str, top: int) -> float:
        """Categories and top functions, per ``per`` units; returns the total seconds."""
        rows = self.rows()
        by_category: dict[str, float] = defaultdict(float)
        by_function: dict[str, float] = defaultdict(float)
        for seconds, where, category in rows:
            by_category[category] += seconds
            by_function[where] += seconds
        total = sum(by_category.values()) or 1.0
        print(f"| where | share of the reactor thread's work | ms per {per_label} (profiled) |")
        print("|---|---|---|")
        for name, seconds in sorted(by_category.items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {seconds / total:.1%} | {seconds / per * 1000:.3f} |")
        print(f"\ntop {top} functions by self time:")
        for where, seconds in sorted(by_function.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {seconds / total:6.1%}  {seconds / per * 1000:7.3f} ms/{per_label}  {where}")
        return total


# -- child processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Child processes that are stopped (SIGTERM, then SIGKILL) when the block ends."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], cpus: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("env", {**os.environ, "PYTHONPATH": str(ROOT)})
        process = subprocess.Popen(argv, preexec_fn=_die_with_parent, **kw)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop what was started."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.05)


def read_listing(path: Path) -> list[dict[str, Any]]:
    """The builders of a slavesim ``--list`` file: ``{"name", "url", "arch_tags"}``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_slavesim(
    children: Children,
    workdir: Path,
    count: int,
    cpus: str | None,
    latency: float = 0.0,
    build_time: float = 3.0,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], list[dict[str, Any]]]:
    """``twistd -n slavesim --count N --port 0 --latency L``; returns it and its builders."""
    listing = workdir / "slavesim.jsonl"
    listing.unlink(missing_ok=True)
    process = children.start(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(workdir / "slavesim.log"), "slavesim"]
        + ["--count", str(count), "--port", "0", "--list", str(listing)]
        + ["--cache-dir", str(workdir / "slavesim-cache"), "--latency", str(latency)]
        + ["--build-time", str(build_time), "--history", "10", *extra],
        cpus=cpus,
        cwd=workdir,
    )
    wait_for_file(listing, process)
    return process, read_listing(listing)


def start_recording_farm(
    children: Children,
    workdir: Path,
    count: int,
    cpus: str | None,
    build_time: float,
    latency: float = 0.0,
    spread: float = 0.0,
    default_gc: bool = False,
) -> tuple[subprocess.Popen[bytes], list[dict[str, Any]], Path]:
    """The recording farm in a child process; returns it, its builders and its record file.

    Its garbage collector is set as ``twistd slavesim`` sets it, unless ``default_gc``."""
    listing = workdir / "farm.jsonl"
    record = workdir / "build-calls.jsonl"
    listing.unlink(missing_ok=True)
    record.unlink(missing_ok=True)
    process = children.start(
        [PYTHON, __file__, "farm", "--count", str(count), "--build-time", str(build_time)]
        + ["--latency", str(latency), "--list", str(listing), "--record", str(record)]
        + ["--build-time-spread", str(spread)]
        + ["--cache-dir", str(workdir / "farm-cache")]
        + (["--default-gc"] if default_gc else []),
        cpus=cpus,
        cwd=workdir,
        stderr=open(workdir / "farm.stderr", "wb"),  # the child owns it
    )
    wait_for_file(listing, process)
    return process, read_listing(listing), record


def read_build_calls(record: Path) -> list[dict[str, Any]]:
    """What the recording farm wrote: ``{"builder", "build_id", "t", "result"}`` per call."""
    if not record.exists():
        return []
    calls = []
    for line in record.read_text().splitlines():
        with contextlib.suppress(ValueError):
            calls.append(json.loads(line))
    return calls


def run_async(main: Any) -> Any:
    """Run ``await main(reactor)`` on the global reactor; return its result or raise its error.

    Ctrl-C / SIGTERM stop the reactor (Twisted's handlers) and raise KeyboardInterrupt here.
    """
    from twisted.internet import defer
    from twisted.internet import reactor as the_reactor

    reactor: Any = the_reactor
    outcome: list[Any] = []

    def go() -> None:
        d = defer.Deferred.fromCoroutine(main(reactor))

        def done(result: Any) -> None:
            outcome.append(result)
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt("the reactor was stopped")
    from twisted.python.failure import Failure

    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def log_to(path: str | None) -> None:
    """Send this process's Twisted log (the master's) to ``path`` (nowhere when ``None``)."""
    from twisted.logger import ILogObserver, globalLogBeginner, textFileLogObserver

    if path:
        observer = textFileLogObserver(open(path, "w"))  # open for the process lifetime
        globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    else:
        globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)


async def start_service(reactor: Any, service: Any) -> Any:
    """Start ``service`` (e.g. a BuildmasterService) and wait until it runs; it is stopped
    when the reactor shuts down first (Ctrl-C, SIGTERM). Stop it with :func:`stop_service`."""

    def stop_if_running() -> Any:
        return service.stopService() if service.running else None

    service.stop_trigger = reactor.addSystemEventTrigger("before", "shutdown", stop_if_running)
    service.startService()
    await service.when_ready()
    return service


async def stop_service(reactor: Any, service: Any) -> None:
    trigger = getattr(service, "stop_trigger", None)
    if trigger is not None:
        service.stop_trigger = None
        with contextlib.suppress(ValueError, KeyError):  # already fired: we are shutting down
            reactor.removeSystemEventTrigger(trigger)
    if service.running:
        await service.stopService()


async def put_chroot_on_every_builder(service: Any) -> None:
    """``ensurepresent`` of the chroot on every builder the master knows, so the measured
    dispatches find it cached (the steady state of a farm)."""
    from twisted.internet import defer

    das = next(d for d in await service.store.distributions.all_arch_series() if d.chroot_id)
    chroot = await service.librarian.get(das.chroot_id)
    url = service.librarian.url_for(chroot)
    warm = await defer.DeferredList(
        [
            defer.Deferred.fromCoroutine(w.client.ensurepresent(chroot.sha1, url))
            for w in service.master.workers.values()
        ],
        consumeErrors=True,
    )
    if not all(ok and r.present for ok, r in warm):
        raise RuntimeError("could not put the chroot on every builder")


async def sleep(reactor: Any, seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


def _safe_key(key: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """``key(*args, **kw)``, or ``None`` when it fails (the code under test changed shape):
    instrumentation must never break what it measures."""
    if key is None:
        return None
    try:
        return key(*args, **kw)
    except Exception:
        return None


class Trace:
    """Timestamps (``time.time()``) of chosen master methods, for a breakdown of a path.

    It wraps methods of the master's classes *in this process only* (instrumentation; the
    code itself is untouched): ``events`` gets ``(kind, key, t)`` tuples.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []
        self._restore: list[tuple[Any, str, Any]] = []

    def on_call(self, cls: Any, name: str, kind: str, key: Any = None) -> None:
        """Record ``kind`` when ``cls.name`` is called (``key(*args)`` identifies it)."""
        original = getattr(cls, name)
        events = self.events

        def wrapper(*args: Any, **kw: Any) -> Any:
            events.append((kind, _safe_key(key, args, kw), time.time()))
            return original(*args, **kw)

        self._patch(cls, name, original, wrapper)

    def on_return(self, cls: Any, name: str, kind: str, key: Any) -> None:
        """Record ``kind`` when the coroutine ``cls.name`` returns; ``key(result, *args)``
        identifies it (``None``: not recorded)."""
        original = getattr(cls, name)
        events = self.events

        async def wrapper(*args: Any, **kw: Any) -> Any:
            result = await original(*args, **kw)
            k = _safe_key(key, (result, *args), kw)
            if k is not None:
                events.append((kind, k, time.time()))
            return result

        self._patch(cls, name, original, wrapper)

    def _patch(self, cls: Any, name: str, original: Any, wrapper: Any) -> None:
        self._restore.append((cls, name, original))
        setattr(cls, name, wrapper)

    def restore(self) -> None:
        while self._restore:
            cls, name, original = self._restore.pop()
            setattr(cls, name, original)

    def first(self, kind: str) -> dict[Any, float]:
        """``{key: time of its first kind event}``."""
        found: dict[Any, float] = {}
        for k, key, t in self.events:
            if k == kind and key not in found:
                found[key] = t
        return found


class GCPauses:
    """The pauses of this process's cyclic garbage collector, by generation (``gc.callbacks``).

    :meth:`snapshot` gives ``{generation: [pause in seconds, ...]}`` since the last one."""

    def __init__(self) -> None:
        self._started = 0.0
        self._pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses[info["generation"]].append(time.perf_counter() - self._started)

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def snapshot(self) -> dict[int, list[float]]:
        pauses, self._pauses = self._pauses, {0: [], 1: [], 2: []}
        return pauses


def describe_gc_pauses(pauses: dict[int, list[float]]) -> str:
    """E.g. ``garbage collector: 12 pauses, 130 ms in all, the longest 48 ms; full passes: 2,
    longest 48 ms``."""
    every = [p for ps in pauses.values() for p in ps]
    full = pauses.get(2, [])
    longest = f", longest {max(full) * 1000:.0f} ms" if full else ""
    return (
        f"garbage collector: {len(every)} pauses, {sum(every) * 1000:.0f} ms in all,"
        f" the longest {max(every, default=0) * 1000:.0f} ms; full passes: {len(full)}{longest}"
    )


class CallCounter:
    """Counts calls of chosen methods (patched at class level, in this process only)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._restore: list[tuple[Any, str, Any]] = []

    def count(self, cls: Any, name: str, label: str) -> None:
        original = getattr(cls, name)
        counts = self.counts
        counts.setdefault(label, 0)

        def wrapper(*args: Any, **kw: Any) -> Any:
            counts[label] += 1
            return original(*args, **kw)

        self._restore.append((cls, name, original))
        setattr(cls, name, wrapper)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def restore(self) -> None:
        while self._restore:
            cls, name, original = self._restore.pop()
            setattr(cls, name, original)


class SQLStats:
    """Per kind of SQL statement (its first words): how many, and how long from the call to
    the result (queueing for a pool connection included), in this process."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self._restore: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        from buildmaster.store.database import Database, Transaction

        for cls, name in (
            (Database, "query"),
            (Database, "execute"),
            (Transaction, "query"),
            (Transaction, "query_one"),
            (Transaction, "execute"),
        ):
            self._wrap(cls, name)

    def _wrap(self, cls: Any, name: str) -> None:
        from twisted.internet import defer

        original = getattr(cls, name)
        calls = self.calls
        prefix = "tx: " if cls.__name__ == "Transaction" else ""

        def wrapper(self_: Any, sql: str, *args: Any, **kw: Any) -> Any:
            key = prefix + " ".join(sql.split())[:70]
            t0 = time.perf_counter()
            result = original(self_, sql, *args, **kw)
            d = result if isinstance(result, defer.Deferred) else defer.ensureDeferred(result)

            def done(value: Any) -> Any:
                calls.setdefault(key, []).append(time.perf_counter() - t0)
                return value

            return d.addBoth(done)

        self._restore.append((cls, name, original))
        setattr(cls, name, wrapper)

    def restore(self) -> None:
        while self._restore:
            cls, name, original = self._restore.pop()
            setattr(cls, name, original)

    def reset(self) -> None:
        self.calls.clear()

    def report(self, per: float, top: int = 25) -> list[str]:
        """The ``top`` kinds by total time: count per ``per`` (e.g. per build), mean ms."""
        rows = sorted(self.calls.items(), key=lambda kv: -sum(kv[1]))
        return [
            f"{len(v) / per:6.2f} x  mean {statistics.fmean(v) * 1000:7.1f} ms  {k}"
            for k, v in rows[:top]
        ]


def count_database_calls(counter: CallCounter) -> None:
    """Count statements (alone or inside transactions) and transactions of the store."""
    from buildmaster.store.database import Database, Transaction

    counter.count(Database, "query", "statements")
    counter.count(Database, "execute", "statements")
    counter.count(Database, "session_query", "statements")
    counter.count(Database, "transaction", "transactions")
    counter.count(Transaction, "query", "statements in transactions")
    counter.count(Transaction, "query_one", "statements in transactions")
    counter.count(Transaction, "execute", "statements in transactions")


# -- PostgreSQL --------------------------------------------------------------------------------


def start_cluster(fsync: bool, settings: dict[str, str] | None = None) -> Any:
    """A started throwaway cluster (stop it with ``.stop()``)."""
    from buildmaster.store.cluster import PostgresCluster

    cluster = PostgresCluster.throwaway_cluster(fsync=fsync, settings=dict(settings or {}))
    cluster.start()
    return cluster


def run_autocommit(dsn: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE DATABASE, CREATE EXTENSION)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database(cluster: Any, name: str = "bench") -> str:
    """Create and migrate database ``name`` (``python -m buildmaster.store.schema``)."""
    run_autocommit(cluster.dsn("postgres"), f'CREATE DATABASE "{name}"')
    dsn = cluster.dsn(name)
    subprocess.run(
        [PYTHON, "-m", "buildmaster.store.schema", "--dsn", dsn],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return str(dsn)


def postgres_cpu(cluster: Any) -> float:
    """CPU seconds used so far by the processes of the cluster that are alive now (postmaster,
    backends, background workers): approximate, a process that exits takes its CPU along."""
    total = 0.0
    datadir = str(cluster.datadir)
    try:
        postmaster = int(Path(datadir, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if int(proc.name) == postmaster or ppid == postmaster:
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


# -- the world the master works in ---------------------------------------------------------


async def prepare_world(store: Any, librarian: Any | None = None) -> Any:
    """The seed's sample data without its builders and jobs; hoary/amd64 gets a chroot when
    a librarian is given. Returns the :class:`~buildmaster.sampledata.SampleData`."""
    from buildmaster.sampledata import load_sample_data

    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    for name in ("bob", "frog"):
        await store.builders.set_active(await store.builders.getByName(name), False)
    if librarian is not None:
        chroot = b"chroot-hoary-amd64 " * 1000
        alias = await librarian.addFile(
            "chroot-hoary-amd64.tar.gz", len(chroot), io.BytesIO(chroot), "application/x-gzip"
        )
        await store.distributions.addOrUpdateChroot(data.hoary_amd64, alias)
    return data


async def register_builders(
    store: Any, listing: Sequence[dict[str, Any]], processor: Any, batch: int = 50
) -> list[Any]:
    """Register every builder of a slavesim list (trusted, one processor), ``batch`` at a time."""
    from twisted.internet import defer

    builders: list[Any] = []
    for start in range(0, len(listing), batch):
        chunk = listing[start : start + batch]
        builders.extend(
            await defer.gatherResults(
                [
                    defer.Deferred.fromCoroutine(
                        store.builders.new(b["name"], b["url"], [processor])
                    )
                    for b in chunk
                ]
            )
        )
    return builders


async def create_sources(
    store: Any, librarian: Any, series: Any, count: int, prefix: str = "pkg", batch: int = 20
) -> list[Any]:
    """``count`` source package releases, each with its own small ``.dsc`` in the librarian
    (so that every dispatch makes the builder download a file it has never seen)."""
    from twisted.internet import defer

    from buildmaster.enums import SourcePackageFileType

    async def one(i: int) -> Any:
        name = f"{prefix}{i}"
        dsc = (
            f"Format: 1.0\nSource: {name}\nBinary: {name}\nArchitecture: any\n"
            f"Version: 1.0-{i}\nMaintainer: Bench <bench@example.com>\n"
        ).encode()
        alias = await librarian.addFile(
            f"{name}_1.0.dsc", len(dsc), io.BytesIO(dsc), "text/x-debian-source-package"
        )
        return await store.sources.new(
            name, "1.0", series, files=[(alias, SourcePackageFileType.DSC)]
        )

    sources: list[Any] = []
    for start in range(0, count, batch):
        sources.extend(
            await defer.gatherResults(
                [
                    defer.Deferred.fromCoroutine(one(i))
                    for i in range(start, min(start + batch, count))
                ]
            )
        )
    return sources


async def create_builds(
    store: Any, db: Any, sources: Sequence[Any], das: Any, archive: Any
) -> list[int]:
    """One NEEDSBUILD build per source (not queued yet): their ids, in order."""
    rows = await db.query(
        "INSERT INTO build (sourcepackagerelease, distroarchseries, archive, pocket, processor,"
        " virtualized) SELECT s, das.id, a.id, 0, das.processor, a.require_virtualized"
        " FROM unnest(%s::integer[]) WITH ORDINALITY AS u(s, n), distroarchseries das, archive a"
        " WHERE das.id = %s AND a.id = %s ORDER BY n RETURNING id",
        ([s.id for s in sources], das.id, archive.id),
    )
    return [r[0] for r in rows]


#: Queue builds the way createBuildQueueEntry does (score aside: every entry gets the same
#: score, so the oldest goes first), in one statement; the trigger sends the NOTIFY.
QUEUE_SQL = (
    "INSERT INTO buildqueue (build, lastscore, processor, virtualized)"
    " SELECT b.id, 2505, b.processor, b.virtualized FROM build b"
    " WHERE b.id = ANY(%s) ORDER BY b.id"
)


# -- the recording farm (this file as a script) ------------------------------------------------


def run_recording_farm(args: argparse.Namespace) -> None:
    """slavesim builders (one process) that log every ``build()`` call they receive.

    One JSON line per call, written as the call arrives (before the builder acts on it):
    ``{"builder": name, "build_id": cookie, "t": time.time(), "result": first value}``;
    and one line when a build finishes on the builder (``"result": "WAITING"``, no build id).
    """
    from twisted.internet import reactor as the_reactor

    from slavesim import Farm

    reactor: Any = the_reactor
    raise_file_limit(args.count)
    if not args.default_gc:
        from slavesim.tap import settle_garbage_collector

        settle_garbage_collector(reactor)
    record = open(args.record, "a", buffering=1)  # open for the process lifetime
    farm = Farm(
        reactor,
        Path(args.cache_dir),
        build_time=args.build_time,
        history_size=10,
    )

    def recording(name: str, build: Any) -> Any:
        def build_recorded(request: Any) -> Any:
            t = time.time()
            outcome: Any = "refused"
            try:
                result = build(request)
                outcome = result[0]
                return result
            finally:
                record.write(
                    json.dumps(
                        {"builder": name, "build_id": request.build_id, "t": t, "result": outcome}
                    )
                    + "\n"
                )

        return build_recorded

    def finish_recorded(name: str, to_waiting: Any) -> Any:
        def waiting() -> None:
            to_waiting()
            record.write(
                json.dumps(
                    {"builder": name, "build_id": None, "t": time.time(), "result": "WAITING"}
                )
                + "\n"
            )

        return waiting

    if args.build_time_spread > 0:
        from slavesim import Outcome, OutcomeRule

        # build durations spread evenly over [T, T + spread] by the package name's last digit
        farm.rules = [
            OutcomeRule(
                Outcome.OK,
                package=f"*{digit}",
                duration=args.build_time + args.build_time_spread * digit / 9,
            )
            for digit in range(10)
        ]

    async def start() -> None:
        sims = await farm.start_builders(args.count, tuple(args.arch.split(",")))
        for sim in sims:
            sim.faults.latency = args.latency
            sim.state.build = recording(sim.name, sim.state.build)  # type: ignore[method-assign]
            sim.state._to_waiting = finish_recorded(sim.name, sim.state._to_waiting)  # type: ignore[method-assign]
        lines = "".join(json.dumps(listing.to_json()) + "\n" for listing in farm.listings())
        tmp = f"{args.list}.tmp"
        Path(tmp).write_text(lines)
        os.replace(tmp, args.list)

    def failed(failure: Any) -> None:
        failure.printTraceback()
        reactor.stop()

    from twisted.internet import defer

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", farm.stop)
    profile_on_signals(reactor, Path(args.record).with_name("farm.prof"))
    reactor.run()


def profile_on_signals(reactor: Any, output: Path) -> None:
    """A diagnostic: SIGUSR1 starts a CPU-time cProfile of this process, SIGUSR2 stops it and
    writes the stats to ``output`` (read them with ``python -m pstats``)."""
    import cProfile
    import signal

    profiler = cProfile.Profile(time.thread_time)

    def start(*_: Any) -> None:
        reactor.callFromThread(profiler.enable)

    def stop(*_: Any) -> None:
        def dump() -> None:
            profiler.disable()
            profiler.dump_stats(str(output))

        reactor.callFromThread(dump)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description="Shared benchmark helpers; 'farm' mode.")
    sub = parser.add_subparsers(dest="mode", required=True)
    farm = sub.add_parser("farm", help="simulated builders that record build() calls")
    farm.add_argument("--count", type=int, required=True)
    farm.add_argument("--build-time", type=float, default=3.0)
    farm.add_argument("--latency", type=float, default=0.0)
    farm.add_argument("--build-time-spread", type=float, default=0.0)
    farm.add_argument("--arch", default="amd64")
    farm.add_argument("--list", required=True)
    farm.add_argument("--record", required=True)
    farm.add_argument("--cache-dir", required=True)
    farm.add_argument("--default-gc", action="store_true")
    args = parser.parse_args()
    if args.mode == "farm":
        run_recording_farm(args)


if __name__ == "__main__":
    main()
