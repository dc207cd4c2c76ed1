"""The waiting jobs in the order builders will take them (a forecast of the claim: the rules
of :mod:`buildmaster.fairshare` applied by :func:`buildmaster.dispatchorder.dispatch_order`
to the queue as it is now, with each owner's usage and the settings the claim reads).

A reading orders every kind at once: one statement gathers the waiting jobs (a walk through
the whole queue), the ordering runs in a thread (at 100,000 waiting jobs a reading is a few
seconds of work on a loaded machine: ``benchmarks/results/queue.md``). Readers within ``max_age`` seconds of a reading share it, and readers asking
while one is made wait for it rather than make their own (``as_of`` says when it was made).
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from buildmaster.dispatchorder import dispatch_order
from buildmaster.fairshare import FairShareConfig, Waiting, decayed
from buildmaster.store.database import Database

__all__ = ["KindOrder", "Listing", "Forecast", "DispatchOrders"]

#: every waiting job, per kind, with what the rules need; each owner's usage of the kind and
#: when it was recorded; the settings; and the database's clock, all in one statement
_READ_SQL = """
WITH j AS (
    SELECT processor, virtualized, array_agg(id) AS ids, array_agg(build) AS builds,
        array_agg(shareowner) AS owners, array_agg(lastscore) AS scores,
        array_agg(extract(epoch FROM datecreated)::float8) AS queued,
        array_agg(extract(epoch FROM estimated_duration)::float8) AS seconds
    FROM buildqueue WHERE status = 0 AND builder IS NULL GROUP BY 1, 2),
u AS (
    SELECT processor, virtualized, array_agg(owner) AS owners, array_agg(usage) AS usage,
        array_agg(extract(epoch FROM stamp)::float8) AS stamps
    FROM shareusage WHERE usage > 0 GROUP BY 1, 2)
SELECT j.processor, j.virtualized, j.ids, j.builds, j.owners, j.scores, j.queued, j.seconds,
    u.owners, u.usage, u.stamps,
    extract(epoch FROM now())::float8, now(),
    f.half_life, f.aging_bound, f.aging_slack, f.default_weight,
    (SELECT array_agg(owner) FROM shareweight), (SELECT array_agg(weight) FROM shareweight)
FROM j LEFT JOIN u ON u.processor = j.processor AND u.virtualized = j.virtualized
CROSS JOIN fairshare f
"""


class KindOrder:
    """The waiting jobs of one kind (processor x virtualization) in dispatch order."""

    def __init__(
        self,
        processor_id: int,
        virtualized: bool,
        jobs: Sequence[Waiting],
        aged: int,
        builds: dict[int, int],
        seconds: dict[int, float],
    ) -> None:
        self.processor_id = processor_id
        self.virtualized = virtualized
        self.job_ids = [j.id for j in jobs]
        self.build_ids = [builds[j.id] for j in jobs]
        #: how many at the head are aged (they go first, the longest waiting first)
        self.aged = aged
        self._positions = {job_id: i + 1 for i, job_id in enumerate(self.job_ids)}
        self._ahead = list(itertools.accumulate((seconds[i] for i in self.job_ids), initial=0.0))

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
    and so on (each kind's builders take its jobs; the kinds by processor, trusted first)."""

    def __init__(self, kinds: Sequence[KindOrder]) -> None:
        self.kinds = list(kinds)
        self._entries: list[tuple[int, int]] | None = None
        self._places: dict[int, int] | None = None
        if len(self.kinds) > 1:
            entries = []
            longest = max(len(k) for k in self.kinds)
            for i in range(longest):
                for n, kind in enumerate(self.kinds):
                    if i < len(kind):
                        entries.append((n, i))
            self._entries = entries
            self._places = {self.kinds[n].job_ids[i]: p for p, (n, i) in enumerate(entries)}

    def __len__(self) -> int:
        return sum(len(k) for k in self.kinds)

    def place(self, job_id: int) -> int | None:
        """The job's index in the listing (0: first), ``None`` when it is not listed."""
        if self._places is not None:
            return self._places.get(job_id)
        if not self.kinds:
            return None
        position = self.kinds[0].position(job_id)
        return position - 1 if position is not None else None

    def slice(self, start: int, limit: int) -> list[tuple[KindOrder, int]]:
        """``limit`` entries from index ``start``: each a kind and the index in its order."""
        if self._entries is not None:
            return [(self.kinds[n], i) for n, i in self._entries[start : start + limit]]
        if not self.kinds:
            return []
        kind = self.kinds[0]
        return [(kind, i) for i in range(start, min(start + limit, len(kind)))]


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
        if len(kinds) > 1:  # every kind's listing is made here (in the reading's thread)
            self.listing(None, None)

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


def _order(rows: list[tuple[Any, ...]]) -> dict[tuple[int, bool], KindOrder]:
    """Every kind's order, from the rows of :data:`_READ_SQL` (no I/O)."""
    kinds: dict[tuple[int, bool], KindOrder] = {}
    for row in rows:
        processor, virtualized, ids, builds, owners, scores, queued, seconds = row[:8]
        usage_owners, usages, stamps, now = row[8:12]
        half_life, bound, slack, default, weight_owners, weights = row[13:19]
        config = FairShareConfig(
            half_life=half_life,
            aging_bound=bound,
            aging_slack=slack,
            default_weight=default,
            weights=dict(zip(weight_owners or (), weights or (), strict=True)),
        )
        usage: dict[int, float] = {}
        for owner, value, stamp in zip(usage_owners or (), usages or (), stamps or (), strict=True):
            usage[owner] = decayed(value, stamp, now, half_life)
        jobs = [Waiting(*fields) for fields in zip(ids, owners, scores, queued, strict=True)]
        estimates = dict(zip(ids, seconds, strict=True))
        order, aged = dispatch_order(jobs, estimates, usage, now, config)
        kinds[(processor, virtualized)] = KindOrder(
            processor, virtualized, order, aged, dict(zip(ids, builds, strict=True)), estimates
        )
    return kinds


class DispatchOrders:
    """Readings of the dispatch order, shared (see the module's doc)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._last: Forecast | None = None
        #: the readers waiting for the reading being made
        self._waiting: list[defer.Deferred[Forecast]] | None = None

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

    async def _read(self) -> Forecast:
        reactor = self._db.clock
        read_at = reactor.seconds()
        rows = await self._db.query(_READ_SQL, prepared=True)
        if not rows:
            [(as_of,)] = await self._db.query("SELECT now()", prepared=True)
            return Forecast({}, as_of, read_at)

        def forecast() -> Forecast:
            return Forecast(_order(rows), rows[0][12], read_at)

        return await threads.deferToThreadPool(reactor, reactor.getThreadPool(), forecast)
