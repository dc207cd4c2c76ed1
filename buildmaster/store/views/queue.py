"""The queue as operators see it: per kind of build (processor x virtualization) its size,
oldest job and estimated drain time; the waiting jobs in dispatch order (the order the claim
would take them in: a forecast, :mod:`buildmaster.store.views.order`); where a waiting build
stands and why it is not running."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from buildmaster.access import Grant
from buildmaster.enums import BuildQueueStatus
from buildmaster.estimates import KindLoad, drain_seconds, start_in_seconds
from buildmaster.store.database import Database
from buildmaster.store.views.builds import (
    SUMMARY_COLUMNS,
    SUMMARY_FROM,
    BuildSummary,
    summary_from_row,
    visibility_args,
    visible_sql,
)
from buildmaster.store.views.order import DispatchOrders
from buildmaster.waiting import KindBuilder, KindBuilders, WaitInputs, WaitReason, why_waiting

__all__ = ["QueueKind", "WaitingJob", "WaitingPage", "Standing", "QueueViews", "kind_name"]


def kind_name(processor: str, virtualized: bool) -> str:
    """``virtualized amd64`` / ``trusted 386``."""
    return f"{'virtualized' if virtualized else 'trusted'} {processor}"


@attrs.frozen
class QueueKind:
    """The queue of one kind of build."""

    processor_id: int
    processor: str
    virtualized: bool
    waiting: int
    suspended: int
    running: int
    oldest_waiting: datetime.datetime | None
    #: builders of this kind: all active ones, and those that take jobs now
    builders: int
    usable_builders: int
    load: KindLoad
    #: when the numbers were read (the database's clock)
    as_of: datetime.datetime

    @property
    def name(self) -> str:
        return kind_name(self.processor, self.virtualized)

    @property
    def drain_seconds(self) -> float | None:
        """Seconds until the last waiting job starts (``None``: no builder takes them)."""
        return drain_seconds(self.load)


@attrs.frozen
class WaitingJob:
    """A waiting job in dispatch order; ``build`` is ``None`` for a private archive's job
    the reader may not see (its place in the queue still counts)."""

    job_id: int
    score: int
    manual: bool
    processor: str
    virtualized: bool
    queued: datetime.datetime
    estimated_seconds: float
    build: BuildSummary | None
    #: its place among the waiting jobs of its kind in dispatch order (1: next)
    position: int
    #: it has waited long enough to go before fair shares (the longest waiting first)
    aged: bool


@attrs.frozen
class WaitingPage:
    jobs: tuple[WaitingJob, ...]
    #: ``(jobs listed so far, job id of the last)``, to ask for the next page; ``None`` at
    #: the end
    next_after: tuple[int, int] | None
    #: when the order was forecast (the database's clock)
    as_of: datetime.datetime


@attrs.frozen
class Standing:
    """Where a waiting (or suspended) build stands, and why it is not running."""

    #: its place among the waiting builds of its kind in dispatch order; not exact (at
    #: least this) for a suspended build, which is out of the order until it is back
    position: int
    position_exact: bool
    ahead_seconds: float
    #: seconds until it should start (``None``: no builder can take it now)
    start_in_seconds: float | None
    reason: WaitReason
    as_of: datetime.datetime


_KINDS_SQL = """
WITH jobs AS (
    SELECT q.processor, q.virtualized,
        count(*) FILTER (WHERE q.status = 0 AND q.builder IS NULL) AS waiting,
        count(*) FILTER (WHERE q.status = 2) AS suspended,
        count(*) FILTER (WHERE q.builder IS NOT NULL) AS running,
        min(q.datecreated) FILTER (WHERE q.status = 0 AND q.builder IS NULL) AS oldest,
        coalesce(sum(extract(epoch FROM q.estimated_duration))
            FILTER (WHERE q.status = 0 AND q.builder IS NULL), 0) AS waiting_seconds,
        coalesce(sum(greatest(extract(epoch FROM q.estimated_duration
            - coalesce(now() - q.date_started, interval '0')), 0))
            FILTER (WHERE q.builder IS NOT NULL), 0) AS running_remaining
    FROM buildqueue q GROUP BY 1, 2),
builders AS (
    SELECT bp.processor, b.virtualized, count(*) AS total,
        count(*) FILTER (WHERE b.builderok AND NOT b.manual) AS usable
    FROM builder b JOIN builderprocessor bp ON bp.builder = b.id
    WHERE b.active GROUP BY 1, 2),
kinds AS (
    SELECT processor, virtualized FROM jobs UNION SELECT processor, virtualized FROM builders)
SELECT k.processor, p.name, k.virtualized, coalesce(j.waiting, 0), coalesce(j.suspended, 0),
    coalesce(j.running, 0), j.oldest, coalesce(j.waiting_seconds, 0),
    coalesce(j.running_remaining, 0), coalesce(bu.total, 0), coalesce(bu.usable, 0),
    coalesce((SELECT extract(epoch FROM l.estimated_duration) FROM buildqueue l
        WHERE l.status = 0 AND l.builder IS NULL AND l.processor = k.processor
            AND l.virtualized = k.virtualized
        ORDER BY l.lastscore, l.id DESC LIMIT 1), 0),
    now()
FROM kinds k JOIN processor p ON p.id = k.processor
LEFT JOIN jobs j ON j.processor = k.processor AND j.virtualized = k.virtualized
LEFT JOIN builders bu ON bu.processor = k.processor AND bu.virtualized = k.virtualized
ORDER BY p.name, k.virtualized
"""

#: where a waiting job stands: what is left of the running jobs of its kind, whether its
#: architecture lacks a chroot (the jobs before it: the dispatch order's forecast)
_STANDING_SQL = """
SELECT running.seconds, (SELECT chroot IS NULL FROM distroarchseries WHERE id = %(das)s)
FROM (
    SELECT coalesce(sum(greatest(extract(epoch FROM q.estimated_duration
        - coalesce(now() - q.date_started, interval '0')), 0)), 0) AS seconds
    FROM buildqueue q
    WHERE q.builder IS NOT NULL AND q.processor = %(processor)s
        AND q.virtualized = %(virtualized)s) running
"""

#: the builders of a kind, counted; a few of those out of service (since when: the partial
#: index on "failed"/"disabled" events) and in manual mode, to be named
_KIND_BUILDERS_SQL = """
WITH kb AS MATERIALIZED (
    SELECT b.id, b.name, b.builderok, b.failed_by_master, b.failnotes, b.manual,
        q.id IS NOT NULL AS busy
    FROM builder b JOIN builderprocessor bp ON bp.builder = b.id
    LEFT JOIN buildqueue q ON q.builder = b.id
    WHERE b.active AND bp.processor = %(processor)s AND b.virtualized = %(virtualized)s),
down AS (
    SELECT kb.name, kb.failed_by_master, kb.failnotes,
        (SELECT e.date FROM event e WHERE e.builder = kb.id AND e.kind IN ('failed', 'disabled')
         ORDER BY e.id DESC LIMIT 1) AS since
    FROM kb WHERE NOT kb.builderok ORDER BY kb.name LIMIT 5)
SELECT (SELECT count(*) FROM kb),
    (SELECT count(*) FROM kb WHERE builderok),
    (SELECT count(*) FROM kb WHERE builderok AND NOT manual),
    (SELECT count(*) FROM kb WHERE builderok AND NOT manual AND NOT busy),
    (SELECT array_agg(name ORDER BY name) FROM down),
    (SELECT array_agg(failed_by_master ORDER BY name) FROM down),
    (SELECT array_agg(failnotes ORDER BY name) FROM down),
    (SELECT array_agg(since ORDER BY name) FROM down),
    (SELECT array_agg(name ORDER BY name) FROM (
        SELECT name FROM kb WHERE builderok AND manual ORDER BY name LIMIT 5) m),
    (SELECT min(name) FROM kb WHERE builderok AND NOT manual AND NOT busy)
"""


#: where a waiting job stands and the builders of its kind, in one statement; and the reason
#: it was last suspended, if it was
_STANDING_AND_BUILDERS_SQL = f"""
SELECT st.*, kb.*,
    (SELECT message FROM event WHERE build = %(build)s AND kind = 'suspended'
     ORDER BY id DESC LIMIT 1)
FROM ({_STANDING_SQL}) st, ({_KIND_BUILDERS_SQL}) kb
"""


class QueueViews:
    def __init__(self, db: Database) -> None:
        self._db = db
        #: the dispatch order's readings (shared by readers of the same moment)
        self.orders = DispatchOrders(db)
        #: the last reading of :meth:`kinds` (when, what), and a reading in flight
        self._kinds: tuple[float, list[QueueKind]] | None = None
        self._waiting_for_kinds: list[defer.Deferred[list[QueueKind]]] | None = None

    async def kinds(self, max_age: float = 0.0) -> list[QueueKind]:
        """Every kind of build that has jobs or builders.

        :param max_age: seconds a reading may be old (each is a walk through the whole
            queue: readers asking at about the same moment share one; ``as_of`` says when
            it was made).
        """
        clock = self._db.clock
        if max_age > 0 and self._kinds is not None:
            read_at, kinds = self._kinds
            if clock.seconds() - read_at <= max_age:
                return kinds
        waiter: defer.Deferred[list[QueueKind]] = defer.Deferred()
        if self._waiting_for_kinds is None:
            self._waiting_for_kinds = []
            defer.Deferred.fromCoroutine(self._read_kinds()).addBoth(self._deliver_kinds)
        self._waiting_for_kinds.append(waiter)
        return await waiter

    def _deliver_kinds(self, result: list[QueueKind] | Failure) -> None:
        waiters, self._waiting_for_kinds = self._waiting_for_kinds or [], None
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        self._kinds = (self._db.clock.seconds(), result)
        for waiter in waiters:
            waiter.callback(result)

    async def _read_kinds(self) -> list[QueueKind]:
        rows = await self._db.query(_KINDS_SQL, prepared=True)
        return [
            QueueKind(
                processor_id=r[0],
                processor=r[1],
                virtualized=r[2],
                waiting=int(r[3]),
                suspended=int(r[4]),
                running=int(r[5]),
                oldest_waiting=r[6],
                builders=int(r[9]),
                usable_builders=int(r[10]),
                load=KindLoad(
                    waiting=int(r[3]),
                    waiting_seconds=float(r[7]),
                    last_seconds=float(r[11]),
                    running_remaining_seconds=float(r[8]),
                    builders=int(r[10]),
                ),
                as_of=r[12],
            )
            for r in rows
        ]

    def forget(self) -> None:
        """The queue was changed by an operator: the next readers see it at once."""
        self.orders.forget()

    async def waiting(
        self,
        grant: Grant,
        processor_id: int | None = None,
        virtualized: bool | None = None,
        after: tuple[int, int] | None = None,
        limit: int = 50,
        max_age: float = 0.0,
    ) -> WaitingPage:
        """Waiting jobs in dispatch order, of one kind or several (of several kinds: the
        first of each kind, then the second of each, ...), after ``after`` = ``(jobs listed
        so far, job id of the last)``: after that job while it is listed, else after that
        many. A job claimed since the order was forecast (at most ``max_age`` seconds ago)
        is left out."""
        forecast = await self.orders.forecast(max_age)
        listing = forecast.listing(processor_id, virtualized)
        start = 0
        if after is not None:
            place = listing.place(after[1])
            start = place + 1 if place is not None else after[0]
        entries = listing.slice(start, limit)
        builds = [kind.build_ids[i] for kind, i in entries]
        rows: list[tuple[Any, ...]] = []
        if builds:
            # what the page shows of the builds still waiting, found by the builds' ids
            rows = await self._db.query(
                f"SELECT {SUMMARY_COLUMNS}, q.datecreated, {visible_sql()}"
                f" FROM {SUMMARY_FROM.replace('LEFT JOIN buildqueue q', 'JOIN buildqueue q')}"
                " WHERE b.id = ANY(%(builds)s) AND q.status = 0 AND q.builder IS NULL",
                {"builds": builds, **visibility_args(grant)},
                prepared=True,
            )
        found = {row[0]: row for row in rows}
        jobs = []
        for kind, i in entries:
            row = found.get(kind.build_ids[i])
            if row is None:
                continue  # dispatched (or cancelled) since
            summary = summary_from_row(row[:-2])
            assert summary.job is not None
            jobs.append(
                WaitingJob(
                    job_id=summary.job.id,
                    score=summary.job.lastscore,
                    manual=summary.job.manual,
                    processor=summary.processor,
                    virtualized=summary.job.virtualized,
                    queued=row[-2],
                    estimated_seconds=summary.estimated_seconds or 0.0,
                    build=summary if row[-1] else None,
                    position=i + 1,
                    aged=i < kind.aged,
                )
            )
        end = start + len(entries)
        next_after = None
        if entries and end < len(listing):
            last_kind, last = entries[-1]
            next_after = (end, last_kind.job_ids[last])
        return WaitingPage(tuple(jobs), next_after, forecast.as_of)

    async def standing(
        self, summary: BuildSummary, max_age: float = 0.0, missing_max_age: float = 0.0
    ) -> Standing | None:
        """Where a waiting or suspended build stands and why it is not running; ``None``
        for a build that is not waiting. Its place is from a forecast of the dispatch order
        at most ``max_age`` seconds old, or ``missing_max_age`` when the job is not in that
        one (queued since)."""
        job = summary.job
        if job is None or job.status not in (BuildQueueStatus.WAITING, BuildQueueStatus.SUSPENDED):
            return None
        suspended = job.status is BuildQueueStatus.SUSPENDED
        forecast = await self.orders.forecast(max_age)
        kind_order = forecast.kind(job.processor_id, job.virtualized)
        position = kind_order.position(job.id) if kind_order is not None else None
        if position is None and not suspended and missing_max_age < max_age:
            forecast = await self.orders.forecast(missing_max_age)  # queued since
            kind_order = forecast.kind(job.processor_id, job.virtualized)
            position = kind_order.position(job.id) if kind_order is not None else None
        waiting = len(kind_order) if kind_order is not None else 0
        exact = position is not None
        if position is None:  # suspended: out of the order, behind every waiting build
            position = waiting + 1
        ahead = position - 1
        ahead_seconds = kind_order.ahead_seconds(position) if kind_order is not None else 0.0
        kind = {"processor": job.processor_id, "virtualized": job.virtualized}
        rows = await self._db.query(
            _STANDING_AND_BUILDERS_SQL,
            {**kind, "das": summary.build.distroarchseries_id, "build": summary.id},
            prepared=True,
        )
        running, no_chroot = rows[0][:2]
        running = float(running)
        counts = rows[0][2:-1]
        names, by_master, notes, since = (list(v or ()) for v in counts[4:8])
        builders = KindBuilders(
            total=int(counts[0]),
            working=int(counts[1]),
            automatic=int(counts[2]),
            free=int(counts[3]),
            out_of_service=tuple(
                KindBuilder(*values) for values in zip(names, by_master, notes, since, strict=True)
            ),
            manual=tuple(counts[8] or ()),
            a_free_one=counts[9],
        )
        suspended_reason = rows[0][-1] if suspended else None
        inputs = WaitInputs(
            architecture=summary.architecture,
            kind=kind_name(summary.processor, job.virtualized),
            suspended=suspended,
            suspended_reason=suspended_reason,
            chroot_missing=bool(no_chroot),
            builders=builders,
            ahead=ahead,
            archive=summary.archive.reference,
            archive_disabled=not summary.archive.enabled,
        )
        usable = builders.automatic
        return Standing(
            position=position,
            position_exact=exact,
            ahead_seconds=ahead_seconds,
            start_in_seconds=None
            if suspended
            else start_in_seconds(ahead_seconds, running, usable),
            reason=why_waiting(inputs),
            as_of=forecast.as_of,
        )
