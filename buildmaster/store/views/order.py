"""The waiting jobs in the order builders will take them (a forecast of the claim: the rules
of :mod:`buildmaster.fairshare`, applied by :func:`buildmaster.dispatchorder.take_turns` to
the queue as it is now, with each owner's usage and the settings the claim reads).

A reading orders every kind at once, without holding the reactor for more than a few
milliseconds at a time (the queue may hold 100,000 jobs; ``benchmarks/results/queue.md``):

* PostgreSQL does the sorting: one read-only snapshot gives the settings and each owner's
  usage (a few rows), then every waiting job through a cursor, ``FETCH``-ed
  :data:`CHUNK_JOBS` at a time as a row of arrays, already in the order the rules need
  (per kind: the aged jobs, the longest waiting first; then each owner's jobs by score, then
  id: the claim's own index). Each chunk is parsed by psycopg2 and kept in flat arrays: no
  object per job (the garbage collector's full collections, which hold the interpreter,
  grow with the objects kept).
* The fair-share turns (:func:`~buildmaster.dispatchorder.take_turns`) then run on the
  reactor's thread in slices of at most :data:`SLICE_SECONDS`, through a
  :class:`~twisted.internet.task.Cooperator`; the reactor runs between slices. (Not in a
  thread: a CPU-bound thread holds the interpreter lock against the reactor.)
* A listing of several kinds (the first of each kind, then the second of each...) is not
  stored: a job's place and a page are computed from the kinds' lengths.

Readers within ``max_age`` seconds of a reading share it, and readers asking while one is
made wait for it rather than make their own (``as_of`` says when it was made).
"""

from __future__ import annotations

import bisect
import datetime
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from buildmaster.dispatchorder import take_turns
from buildmaster.fairshare import FairShareConfig
from buildmaster.store.database import Database, Transaction

__all__ = ["KindOrder", "Listing", "Forecast", "DispatchOrders", "CHUNK_JOBS", "SLICE_SECONDS"]

#: jobs a ``FETCH`` brings (psycopg2 parses them on the reactor's thread)
CHUNK_JOBS = 1000
#: the longest the ordering holds the reactor at a time
SLICE_SECONDS = 0.002
#: jobs taken between two looks at the clock
_STEP_JOBS = 64

#: the settings and each owner's usage of each kind (decayed to now: the view does it), and
#: the database's clock (the snapshot's)
_SETTINGS_SQL = """
SELECT f.half_life, f.aging_bound, f.aging_slack, f.default_weight,
    (SELECT array_agg(owner) FROM shareweight), (SELECT array_agg(weight) FROM shareweight),
    (SELECT array_agg(processor) FROM shareusage WHERE usage > 0),
    (SELECT array_agg(virtualized) FROM shareusage WHERE usage > 0),
    (SELECT array_agg(owner) FROM shareusage WHERE usage > 0),
    (SELECT array_agg(usage) FROM shareusage WHERE usage > 0),
    now()
FROM fairshare f
"""

#: every waiting job in the order the rules take them apart: per kind, the aged ones first
#: (the longest waiting first: the claim's test, migration 0008), then each owner's by score
#: (buildqueue_share_idx's order); in chunks of ``%(chunk)s`` jobs, a chunk a row of arrays
#: (what psycopg2 makes of a row of arrays is a few lists, not a tuple per job)
_JOBS_SQL = """
DECLARE dispatch_order NO SCROLL CURSOR FOR
SELECT processor, virtualized, array_agg(aged ORDER BY n), array_agg(id ORDER BY n),
    array_agg(build ORDER BY n), array_agg(shareowner ORDER BY n),
    array_agg(seconds ORDER BY n)
FROM (
    SELECT q.processor, q.virtualized, q.aged, q.id, q.build, q.shareowner,
        coalesce(extract(epoch FROM q.estimated_duration)::float8, 0) AS seconds,
        row_number() OVER (ORDER BY q.processor, q.virtualized, q.aged DESC,
            CASE WHEN q.aged THEN q.datecreated END, CASE WHEN q.aged THEN q.id END,
            q.shareowner, q.lastscore DESC, q.id) AS n
    FROM (
        SELECT q.*, q.datecreated
                <= now() - make_interval(secs => f.aging_bound - f.aging_slack) AS aged
        FROM buildqueue q CROSS JOIN fairshare f
        WHERE q.status = 0 AND q.builder IS NULL) q) q
GROUP BY processor, virtualized, (n - 1) / %(chunk)s
ORDER BY min(n)
"""


class KindOrder:
    """The waiting jobs of one kind (processor x virtualization) in dispatch order."""

    def __init__(self, processor_id: int, virtualized: bool) -> None:
        self.processor_id = processor_id
        self.virtualized = virtualized
        self.job_ids = array("q")
        self.build_ids = array("q")
        #: how many at the head are aged (they go first, the longest waiting first)
        self.aged = 0
        self._positions: dict[int, int] = {}
        #: the estimates of the jobs before each place (``[0]``: none)
        self._ahead = array("d", [0.0])

    def _take(self, job_id: int, build_id: int, seconds: float) -> None:
        self.job_ids.append(job_id)
        self.build_ids.append(build_id)
        self._positions[job_id] = len(self.job_ids)
        self._ahead.append(self._ahead[-1] + seconds)

    def __len__(self) -> int:
        return len(self.job_ids)

    def position(self, job_id: int) -> int | None:
        """Its place (1: next), ``None`` for a job not in the order."""
        return self._positions.get(job_id)

    def ahead_seconds(self, position: int) -> float:
        """The estimates of the jobs before ``position`` (``len + 1``: of all of them)."""
        return self._ahead[position - 1]


class Listing:
    """The jobs of some kinds in one list: the first of each kind, then the second of each,
    and so on (each kind's builders take its jobs; the kinds by processor, trusted first).
    Places are computed from the kinds' lengths (nothing per job is stored)."""

    def __init__(self, kinds: Sequence[KindOrder]) -> None:
        self.kinds = list(kinds)
        self._lengths = [len(k) for k in self.kinds]

    def __len__(self) -> int:
        return sum(self._lengths)

    def _before_round(self, i: int) -> int:
        """How many entries come before every kind's ``i``-th job (0-based)."""
        return sum(min(n, i) for n in self._lengths)

    def place(self, job_id: int) -> int | None:
        """The job's index in the listing (0: first), ``None`` when it is not listed."""
        for k, kind in enumerate(self.kinds):
            position = kind.position(job_id)
            if position is not None:
                i = position - 1
                return self._before_round(i) + sum(1 for n in self._lengths[:k] if n > i)
        return None

    def slice(self, start: int, limit: int) -> list[tuple[KindOrder, int]]:
        """``limit`` entries from index ``start``: each a kind and the index in its order."""
        if start >= len(self) or limit <= 0:
            return []
        # the round (an index in every kind's order) the entry ``start`` is in
        i = bisect.bisect_right(range(max(self._lengths) + 1), start, key=self._before_round) - 1
        skip = start - self._before_round(i)
        found: list[tuple[KindOrder, int]] = []
        while len(found) < limit:
            in_round = [kind for kind, n in zip(self.kinds, self._lengths, strict=True) if n > i]
            if not in_round:
                break
            found.extend((kind, i) for kind in in_round[skip : skip + limit - len(found)])
            skip = 0
            i += 1
        return found


class Forecast:
    """One reading: every kind's dispatch order."""

    def __init__(
        self, kinds: dict[tuple[int, bool], KindOrder], as_of: datetime.datetime, read_at: float
    ) -> None:
        self.kinds = kinds
        #: when the queue was read (the database's clock), and by the master's clock
        self.as_of = as_of
        self.read_at = read_at
        self._listings: dict[tuple[int | None, bool | None], Listing] = {}

    def kind(self, processor_id: int, virtualized: bool) -> KindOrder | None:
        return self.kinds.get((processor_id, virtualized))

    def listing(self, processor_id: int | None, virtualized: bool | None) -> Listing:
        """The jobs of the kinds of that processor (any: ``None``) and virtualization."""
        key = (processor_id, virtualized)
        found = self._listings.get(key)
        if found is None:
            chosen = [
                self.kinds[k]
                for k in sorted(self.kinds)
                if processor_id in (None, k[0]) and virtualized in (None, k[1])
            ]
            found = self._listings[key] = Listing(chosen)
        return found


class _KindJobs:
    """The waiting jobs of one kind as read (flat arrays, a job by its index in them)."""

    def __init__(self) -> None:
        self.job_ids = array("q")
        self.build_ids = array("q")
        self.seconds = array("d")
        self.aged = 0
        #: each owner's jobs (indices), the best first while reading
        self.queues: dict[int, list[int]] = {}
        #: the owners of the aged jobs (the first ``aged``), in order
        self.aged_owners = array("q")


class _Reading:
    """What one snapshot of the queue gave: the settings, usage, and each kind's jobs."""

    def __init__(self, settings: tuple[Any, ...]) -> None:
        half_life, bound, slack, default, weight_owners, weights = settings[:6]
        usage_processors, usage_virtualized, usage_owners, usages, self.as_of = settings[6:11]
        self.config = FairShareConfig(
            half_life=half_life,
            aging_bound=bound,
            aging_slack=slack,
            default_weight=default,
            weights=dict(zip(weight_owners or (), weights or (), strict=True)),
        )
        self.usage: dict[tuple[int, bool], dict[int, float]] = {}
        for processor, virtualized, owner, value in zip(
            usage_processors or (),
            usage_virtualized or (),
            usage_owners or (),
            usages or (),
            strict=True,
        ):
            self.usage.setdefault((processor, virtualized), {})[owner] = float(value)
        self.kinds: dict[tuple[int, bool], _KindJobs] = {}

    def add(self, chunk: tuple[Any, ...]) -> None:
        """A chunk of :data:`_JOBS_SQL`: jobs of one kind, in order."""
        processor, virtualized, aged_ones, job_ids, build_ids, owners, seconds_of = chunk
        jobs = self.kinds.get((processor, virtualized))
        if jobs is None:
            jobs = self.kinds[(processor, virtualized)] = _KindJobs()
        jobs.build_ids.extend(build_ids)
        jobs.seconds.extend(seconds_of)
        for aged, job_id, owner in zip(aged_ones, job_ids, owners, strict=True):
            index = len(jobs.job_ids)
            jobs.job_ids.append(job_id)
            if aged:
                jobs.aged += 1
                jobs.aged_owners.append(owner)
            else:
                queue = jobs.queues.get(owner)
                if queue is None:
                    queue = jobs.queues[owner] = []
                queue.append(index)


def _ordering(reading: _Reading, done: dict[tuple[int, bool], KindOrder]) -> Iterator[None]:
    """Every kind's order into ``done``, a few jobs per step (a :class:`Cooperator`'s task)."""
    for key, jobs in sorted(reading.kinds.items()):
        kind = done[key] = KindOrder(*key)
        kind.aged = jobs.aged
        used = dict(reading.usage.get(key, {}))
        job_ids, build_ids, seconds_of = jobs.job_ids, jobs.build_ids, jobs.seconds
        take = kind._take
        # the aged jobs first, the longest waiting first, each charged to its owner
        for index, owner in enumerate(jobs.aged_owners):
            seconds = seconds_of[index]
            take(job_ids[index], build_ids[index], seconds)
            used[owner] = used.get(owner, 0.0) + seconds
            if index % _STEP_JOBS == 0:
                yield None
        for queue in jobs.queues.values():
            queue.reverse()  # the best last: taken with pop()
        yield None
        step = 0
        for index in take_turns(jobs.queues, seconds_of.__getitem__, used, reading.config):
            take(job_ids[index], build_ids[index], seconds_of[index])
            step += 1
            if step == _STEP_JOBS:
                step = 0
                yield None


def _slice_predicate() -> Callable[[], bool]:
    ends = time.perf_counter() + SLICE_SECONDS
    return lambda: time.perf_counter() >= ends


class DispatchOrders:
    """Readings of the dispatch order, shared (see the module's doc)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._last: Forecast | None = None
        #: the readers waiting for the reading being made
        self._waiting: list[defer.Deferred[Forecast]] | None = None
        self._cooperator = task.Cooperator(
            terminationPredicateFactory=_slice_predicate,
            scheduler=lambda work: db.clock.callLater(0, work),
        )

    def forget(self) -> None:
        """The queue changed (an operator's rescore, cancel, retry): the next reader gets a
        reading begun after this (one being made is left to those already waiting)."""
        self._last = None
        self._waiting = None

    async def forecast(self, max_age: float = 0.0) -> Forecast:
        """A reading at most ``max_age`` seconds old (0: a new one, or the one being made)."""
        last = self._last
        if max_age > 0 and last is not None and self._db.clock.seconds() - last.read_at <= max_age:
            return last
        waiter: defer.Deferred[Forecast] = defer.Deferred()
        if self._waiting is None:
            waiting: list[defer.Deferred[Forecast]] = []
            self._waiting = waiting
            d = defer.Deferred.fromCoroutine(self._read())
            d.addBoth(self._deliver, waiting)
        self._waiting.append(waiter)
        return await waiter

    def _deliver(self, result: Forecast | Failure, waiters: list[defer.Deferred[Forecast]]) -> None:
        current = self._waiting is waiters
        if current:
            self._waiting = None
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        if current:
            self._last = result
        for waiter in waiters:
            waiter.callback(result)

    async def read_queue(self) -> _Reading:
        """The settings, usage and waiting jobs, from one snapshot (in slices)."""

        async def read(tx: Transaction) -> _Reading:
            await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            reading = _Reading((await tx.query(_SETTINGS_SQL))[0])
            await tx.execute(_JOBS_SQL, {"chunk": CHUNK_JOBS})
            while True:
                chunk = await tx.query_one("FETCH 1 FROM dispatch_order")
                if chunk is None:
                    return reading
                reading.add(chunk)

        return await self._db.transaction(read)

    async def order(self, reading: _Reading) -> dict[tuple[int, bool], KindOrder]:
        """Every kind's order, made in slices on the reactor's thread."""
        done: dict[tuple[int, bool], KindOrder] = {}
        await self._cooperator.cooperate(_ordering(reading, done)).whenDone()
        return done

    async def _read(self) -> Forecast:
        read_at = self._db.clock.seconds()
        reading = await self.read_queue()
        return Forecast(await self.order(reading), reading.as_of, read_at)
