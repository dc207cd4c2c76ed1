"""Fail-over with real processes: three ``twistd buildmaster`` masters (state directories of
their own, one database, one files directory) working 300 simulated builders (one farm
process) with builds flowing.

* One master is killed (SIGKILL): the others work its builders within two scan intervals.
* It comes back: the builders spread over the three again.
* The database connection of another (not the process) is cut silently: a relay between it
  and PostgreSQL forwards nothing more and keeps its sockets open; the relay closes the
  server's side only after twice the lease, as the server's keepalives do (the session's
  settings are checked in test_fencing.py). That master stops working its builders before
  the others take them.

Throughout: no builder is worked by two masters at once (the builders record the User-Agent,
which names the master's process, and the time of every call), no build is lost or runs on two
builders at once, no file is stored twice.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from failover_farm import Call, build_runs, built_files, read_calls, runs
from tcp_relay import Relay, relayed_dsn
from twisted.internet import defer, task

from buildmaster.enums import BuildStatus, PackagePublishingPocket, SourcePackageFileType
from buildmaster.ownership import OWNERSHIP_LOCK
from buildmaster.store import Store
from buildmaster.store.database import application_name
from buildmaster.testing import master_process, wait_for

HERE = Path(__file__).resolve().parent
BUILDERS = 300
SCAN = 2.0  # scan interval, s
LEASE = 3.0  # the masters' session lease, s: the server keeps a silent session 2 x LEASE
BUILD_TIME = 8.0
BUILDS = 1500
#: deadlines that only end a test that hangs (verdicts come from recorded times)
PATIENCE = 90.0
#: states a build must never end in here (every builder builds everything)
BAD = {BuildStatus.FAILEDTOBUILD, BuildStatus.CHROOTWAIT, BuildStatus.FAILEDTOUPLOAD}


class Masters:
    """The master processes, by name; each names itself "... pid N)" to the builders."""

    def __init__(self, dsn: str, files: Path, tmp_path: Path) -> None:
        self.dsn = dsn
        self.files = files
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.by_pid: dict[int, str] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, dsn: str | None = None) -> None:
        state = self.tmp_path / name.split("-")[0]
        state.mkdir(exist_ok=True)
        log = self.tmp_path / f"{name}.log"
        proc = master_process(
            dsn or self.dsn,
            state,
            log,
            "--files-dir",
            str(self.files),
            "--scan-interval",
            str(SCAN),
            "--session-lease",
            str(LEASE),
            "--socket-timeout",
            "20",
        )
        self.procs[name], self.by_pid[proc.pid], self.logs[name] = proc, name, log

    def name_of(self, call: Call) -> str:
        pid = int(call.master.rsplit("pid ", 1)[1].rstrip(")"))
        return self.by_pid[pid]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _holders(store: Store) -> list[int]:
    """How many builders each database session holds (the truth of who works what)."""
    rows = await store.db.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s::oid AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " GROUP BY pid ORDER BY 1",
        (OWNERSHIP_LOCK,),
    )
    return [int(r[0]) for r in rows]


async def _sessions(store: Store, pid: int) -> int:
    """How many database sessions the master process ``pid`` has (by the name it gives them)."""
    [(n,)] = await store.db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (application_name(pid),),
    )
    return int(n)


async def _sessions_gone(reactor: Any, store: Store, pid: int) -> float:
    """Wait until the master process ``pid`` has no database session left; that moment, in
    the server's clock (epoch seconds). A killed or cut-off master's backends still run what
    had reached them (a statement sent just before, the transaction it is in), and PostgreSQL
    dates a row by its transaction's start: no statement of that master starts after this."""
    deadline = reactor.seconds() + PATIENCE
    while (left := await _sessions(store, pid)) > 0:
        assert reactor.seconds() < deadline, f"{left} sessions of pid {pid} still open"
        await task.deferLater(reactor, 0.01, lambda: None)
    [(gone,)] = await store.db.query("SELECT extract(epoch FROM clock_timestamp())")
    return float(gone)


def _last_polls(
    calls: list[Call], masters: Masters, before: float, name: str | None, held: set[str] | None
) -> dict[str, float]:
    """The time of the last status call before ``before`` to each builder (of ``held``, from
    master ``name``, when given): a collection starts with one, and none comes while it goes
    on."""
    last: dict[str, float] = {}
    for c in calls:
        if (
            c.method == "status"
            and c.t < before
            and (held is None or c.builder in held)
            and (name is None or masters.name_of(c) == name)
        ):
            last[c.builder] = max(last.get(c.builder, c.t), c.t)
    return last


#: a log's name says its build's source (``p17``: the 18th build queued):
#: ``buildlog_ubuntu-hoary-i386.p17_1.0_FULLYBUILT.txt.gz``
_SOURCE = re.compile(r"^buildlog_[^.]*\.p(\d+)_1\.0_")


async def _queue_builds(store: Store, world: Any, count: int) -> list[int]:
    dsc = await world.add("pkg_1.0.dsc", b"Source: pkg\n")
    ids: list[int] = []

    async def one(i: int) -> int:
        spr = await store.sources.new(
            f"p{i}", "1.0", world.data.hoary, files=[(dsc, SourcePackageFileType.DSC)]
        )
        build = await store.builds.createBuild(
            spr, world.data.hoary_i386, PackagePublishingPocket.RELEASE, world.data.primary
        )
        await store.queue.createBuildQueueEntry(build)
        return int(build.id)

    for start in range(0, count, 50):
        ids.extend(
            await defer.gatherResults(
                [defer.Deferred.fromCoroutine(one(i)) for i in range(start, start + 50)]
            )
        )
    return ids


def _last_worker(calls: list[Call], masters: Masters, before: float) -> dict[str, str]:
    """Which master made the last call to each builder before ``before``."""
    last: dict[str, tuple[float, str]] = {}
    for c in calls:
        if c.t < before and (c.builder not in last or c.t >= last[c.builder][0]):
            last[c.builder] = (c.t, masters.name_of(c))
    return {b: m for b, (_, m) in last.items()}


def _firsts_after(
    calls: list[Call], masters: Masters, after: float, excluded: str
) -> dict[str, float]:
    """Each builder's first call after ``after`` from a master other than ``excluded``."""
    first: dict[str, float] = {}
    for c in calls:
        if c.t > after and masters.name_of(c) != excluded:
            first[c.builder] = min(first.get(c.builder, c.t), c.t)
    return first


def _scan_period(
    calls: list[Call], masters: Masters, start: float, end: float, skipped: set[str]
) -> float:
    """The median time between two status polls of one builder, over the builders not in
    ``skipped``, from ``start`` to ``end``: how often the masters really scanned."""
    polls: dict[str, list[float]] = {}
    for c in calls:
        if c.method == "status" and c.builder not in skipped and start <= c.t <= end:
            polls.setdefault(c.builder, []).append(c.t)
    gaps = [b - a for times in polls.values() for a, b in itertools.pairwise(sorted(times))]
    return statistics.median(gaps) if gaps else 0.0


def _story(calls: list[Call], masters: Masters, given_twice: dict[str, list[str]]) -> str:
    """What the builders given one build saw (not their status calls), for a failure."""
    lines = [f"builds on two builders at once: {given_twice}"]
    t0 = calls[0].t if calls else 0.0
    for build, builders in list(given_twice.items())[:2]:
        for builder in builders:
            seq = [
                f"{c.t - t0:.2f} {masters.name_of(c)} {c.method} {c.build_id or ''}"
                for c in calls
                if c.builder == builder and c.method != "status"
            ]
            lines.append(f"{build} {builder}: {seq[-15:]}")
    return "\n".join(lines)


@pytest_twisted.ensureDeferred
async def test_three_masters_fail_over_and_fence(
    reactor: Any, store: Store, dsn: str, process_world: Any, tmp_path: Path
) -> None:
    world = process_world
    files = world.state / "librarian"  # where the world's librarian put the chroot
    listing, record = tmp_path / "farm.jsonl", tmp_path / "calls.jsonl"
    ran = tmp_path / "runs.jsonl"
    with open(tmp_path / "farm.stderr", "wb") as stderr:
        farm = subprocess.Popen(
            [sys.executable, str(HERE / "failover_farm.py"), "--count", str(BUILDERS)]
            + ["--build-time", str(BUILD_TIME), "--list", str(listing)]
            + ["--record", str(record), "--cache-dir", str(tmp_path / "cache")]
            + ["--runs", str(ran)],
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    path, through = relayed_dsn(dsn)
    relay = Relay(path)
    masters = Masters(dsn, files, tmp_path)
    try:
        await wait_for(reactor, listing.exists, PATIENCE, "the farm to listen")
        sims = [json.loads(line) for line in listing.read_text().splitlines()]
        for start in range(0, len(sims), 50):
            await defer.gatherResults(
                [
                    defer.Deferred.fromCoroutine(
                        store.builders.new(s["name"], s["url"], [world.data.processor_386])
                    )
                    for s in sims[start : start + 50]
                ]
            )
        builds = await _queue_builds(store, world, BUILDS)

        async def holders_are(check: Any) -> bool:
            return bool(check(await _holders(store)))

        def spread(held: list[int]) -> bool:
            return held == [BUILDERS // 3] * 3  # each its share

        async def built() -> int:
            rows = await store.db.query(
                "SELECT count(*) FROM build WHERE id = ANY(%s) AND buildstate = %s",
                (builds, int(BuildStatus.FULLYBUILT)),
            )
            return int(rows[0][0])

        async def built_at_least(n: int) -> bool:
            return await built() >= n

        # -- three masters share the farm ------------------------------------------------
        masters.start("a")
        masters.start("b")
        masters.start("c", through.format(port=relay.port))  # the one to be cut off
        await wait_for(reactor, lambda: holders_are(spread), PATIENCE, "the masters to spread")
        spread_at = time.time()
        await wait_for(reactor, lambda: built_at_least(20), PATIENCE, "builds to flow")
        # each master's sessions carry its name (and pid): what tells its files' end below
        for name in ("a", "b", "c"):
            assert await _sessions(store, masters.procs[name].pid) > 0, name

        # -- SIGKILL one ---------------------------------------------------------------
        killed_at = time.time()
        masters.procs["a"].kill()
        masters.procs["a"].wait()
        # the master is the process killed (twistd -n, no wrapper, no children); its
        # backends may still run what it had sent: no statement of a starts after a_gone
        a_gone = await _sessions_gone(reactor, store, masters.procs["a"].pid)
        held_by_a = {
            b for b, m in _last_worker(read_calls(record), masters, killed_at).items() if m == "a"
        }
        assert held_by_a
        await wait_for(
            reactor,
            lambda: holders_are(lambda h: len(h) == 2 and sum(h) == BUILDERS),
            PATIENCE,
            "the others to take a's builders",
        )

        def taken_over(held: set[str], since: float, gone: str) -> bool:
            return held <= set(_firsts_after(read_calls(record), masters, since, gone))

        await wait_for(
            reactor, lambda: taken_over(held_by_a, killed_at, "a"), PATIENCE, "calls to them"
        )
        calls = read_calls(record)
        firsts = _firsts_after(calls, masters, killed_at, "a")
        takeover = max(firsts[b] - killed_at for b in held_by_a)
        # two scan intervals as the survivors really scanned meanwhile (a loaded machine
        # stretches their rounds; quiet, this is 2 x SCAN)
        period = _scan_period(calls, masters, killed_at, killed_at + takeover, held_by_a)
        assert takeover <= 2 * max(SCAN, period), (
            f"a's builders worked again after {takeover:.2f} s"
            f" (the others' builders were polled every {period:.2f} s)"
        )
        before_revival = await built()

        # -- it comes back ------------------------------------------------------------
        masters.start("a-again")
        await wait_for(reactor, lambda: holders_are(spread), PATIENCE, "the masters to spread")
        await wait_for(
            reactor, lambda: built_at_least(before_revival + 20), PATIENCE, "builds to go on"
        )

        await task.deferLater(reactor, SCAN, lambda: None)  # the last give-backs worked on

        # -- c's database connection is cut, silently ---------------------------------
        relay.blackhole()
        assert relay.blackholed_at is not None
        cut_at = relay.blackholed_at
        # the server gives up on the silent client after 2 x LEASE (its keepalives)
        drop = reactor.callLater(2 * LEASE, relay.drop_servers)
        held_by_c = {
            b for b, m in _last_worker(read_calls(record), masters, cut_at).items() if m == "c"
        }
        assert held_by_c
        await wait_for(
            reactor,
            lambda: holders_are(lambda h: len(h) == 2 and sum(h) == BUILDERS),
            PATIENCE,
            "the others to take c's builders",
        )
        await wait_for(
            reactor, lambda: taken_over(held_by_c, cut_at, "c"), PATIENCE, "calls to them"
        )
        assert not drop.active()
        # the relay forwarded c's statements until held_at; the server ran them until it
        # ended c's sessions (2 x LEASE after the cut): no statement of c starts after c_gone
        c_gone = await _sessions_gone(reactor, store, masters.procs["c"].pid)
        assert relay.held_at is not None
        held_at = relay.held_at
        await task.deferLater(reactor, SCAN, lambda: None)  # anything c might still send
    finally:
        stopping_at = time.time()
        relay.close()
        masters.stop_all()
        farm.send_signal(signal.SIGTERM)
        try:
            farm.wait(timeout=30)
        except subprocess.TimeoutExpired:
            farm.kill()
            farm.wait()

    calls = read_calls(record)
    # c stopped working its builders within its lease: before the server could free them
    last_from_c = max(c.t for c in calls if masters.name_of(c) == "c")
    assert last_from_c < cut_at + 2 * LEASE, f"c called a builder {last_from_c - cut_at:.2f} s in"
    firsts = _firsts_after(calls, masters, cut_at, "c")
    for builder in held_by_c:
        last_c = max(c.t for c in calls if c.builder == builder and masters.name_of(c) == "c")
        assert last_c < firsts[builder], builder
    assert "did not answer within its lease" in masters.logs["c"].read_text(errors="replace")

    # no builder worked by two masters at once: once spread, each master works a builder in
    # one stretch (a master never gets back a builder it gave up, and a killed or cut-off
    # master never comes back under the same process)
    stretches = collections.Counter(
        (builder, master) for builder, master, _, end in runs(calls) if end >= spread_at
    )
    twice = {k: n for k, n in stretches.items() if n > 1}
    assert not twice, f"builders worked by two masters in turn: {sorted(twice)[:5]}"

    # no build lost, none run on two builders at once, no file stored twice
    rows = await store.db.query(
        "SELECT buildstate, count(*) FROM build WHERE id = ANY(%s) GROUP BY 1", (builds,)
    )
    states = {BuildStatus(s): int(n) for s, n in rows}
    assert not BAD & set(states), states
    assert sum(states.values()) == BUILDS and states[BuildStatus.FULLYBUILT] >= 60, states
    sent = collections.defaultdict(set)
    for c in calls:
        if c.method == "build":
            sent[c.build_id].add(c.builder)
    # a build() a builder refused (it was not idle) is no run: what must never happen is a
    # build running on two builders at once
    assert sent
    given_twice = {build: sorted(b) for build, b in sent.items() if len(b) > 1}
    at_once = {}
    for build, where in build_runs(ran).items():
        where.sort(key=lambda r: r[1])
        for (b1, _, end1), (b2, start2, _) in itertools.pairwise(where):
            if start2 < end1:
                at_once[build] = [b1, b2]
    assert not at_once, _story(calls, masters, at_once)
    # Files stored for a build but linked to none: a collection that never finished. The
    # only ones allowed are those of the collections the SIGKILL, the cut or the final stop
    # broke off, still expiring (the collector reclaims them): made before the kill or after
    # the stop began, or made by the last collection of the build that had ended on a
    # builder when it was last polled before the break (by the killed or the cut-off master,
    # or by anyone before the stop, the build then never finished), after that poll (the
    # collection started there) and, for the kill and the cut, before the server ended the
    # master's last session; one such file of each name per build and break (one collection
    # was under way). Any other would be a second collection of a build.
    strays = await store.db.query(
        "SELECT a.filename, extract(epoch FROM a.datecreated), a.expires IS NOT NULL, c.sha1"
        " FROM libraryfilealias a JOIN libraryfilecontent c ON c.id = a.content"
        " WHERE NOT EXISTS (SELECT 1 FROM buildfile f WHERE f.libraryfile = a.id)"
        " AND NOT EXISTS (SELECT 1 FROM build b WHERE b.log = a.id)"
        " AND NOT EXISTS (SELECT 1 FROM sourcepackagereleasefile s WHERE s.libraryfile = a.id)"
        " AND NOT EXISTS (SELECT 1 FROM distroarchseries d WHERE d.chroot = a.id)"
    )
    unfinished = {
        f"PACKAGEBUILD-{b}"
        for (b,) in await store.db.query(
            "SELECT id FROM build WHERE id = ANY(%s) AND buildstate = %s",
            (builds, int(BuildStatus.BUILDING)),
        )
    }
    ran_where, made_by = build_runs(ran), built_files(ran)
    breaks = {  # the last polls before each break, and the end of the master's statements
        "a": (_last_polls(calls, masters, killed_at, "a", held_by_a), a_gone),
        "c": (_last_polls(calls, masters, held_at, "c", held_by_c), c_gone),
        "the stop": (_last_polls(calls, masters, stopping_at, None, None), stopping_at),
    }

    def broken_off_by(build: str, t: float) -> str | None:
        """Which break broke off the collection of ``build`` that stored a file at ``t``."""
        if t <= killed_at:
            return "before the kill"
        if t >= stopping_at:
            return "after the stop began"
        for name, (polled, gone) in breaks.items():
            if name == "the stop" and build not in unfinished:
                continue
            for builder, _, end in ran_where.get(build, []):
                if builder in polled and end <= polled[builder] <= t <= gone:
                    return name
        return None

    broken_off = collections.Counter[str | None]()
    wrong, once = [], set()
    for filename, t, expiring, sha1 in sorted(strays, key=lambda r: float(r[1])):
        named = _SOURCE.search(filename)
        build = f"PACKAGEBUILD-{builds[int(named[1])]}" if named else made_by.get(sha1, "")
        by = broken_off_by(build, float(t))
        if by in breaks and (by, build, filename) in once:
            by = None  # a second file of that name for the build: a second collection
        once.add((by, build, filename))
        broken_off[by] += 1
        if not expiring or by is None:
            wrong.append((filename, build, f"{float(t) - killed_at:.3f} s after the kill"))
    assert not wrong, (
        f"{len(wrong)} files of no broken-off collection: {wrong[:10]}; a's sessions gone"
        f" {a_gone - killed_at:.3f} s after the kill; c cut at {held_at - killed_at:.3f} s,"
        f" its sessions gone at {c_gone - killed_at:.3f} s; stop at"
        f" {stopping_at - killed_at:.3f} s"
    )
    [(results,)] = await store.db.query("SELECT count(*) FROM buildfile")
    assert results >= 2 * states[BuildStatus.FULLYBUILT]  # a .deb and a .changes each
    print(
        f"\nkill: a's {len(held_by_a)} builders worked again after {takeover:.2f} s at most;"
        f" cut: c's last call {last_from_c - cut_at:.2f} s after the cut (lease {LEASE:g} s,"
        f" server gives up at {2 * LEASE:g} s), its {len(held_by_c)} builders worked again"
        f" after {min(firsts[b] for b in held_by_c) - cut_at:.2f} s at the earliest;"
        f" builds {dict((s.name, n) for s, n in states.items())};"
        f" files of collections broken off, expiring: {dict(broken_off)}"
        f" (a's sessions gone {a_gone - killed_at:.3f} s after the kill);"
        f" build() of one build sent to two builders: {len(given_twice)}"
    )
