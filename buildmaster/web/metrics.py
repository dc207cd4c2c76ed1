"""``/metrics``: the master's measurements and the farm's state, for Prometheus.

What the master measures itself (:class:`buildmaster.metrics.Metrics`) is joined, in the same
registry, by what is read from the database every ``interval`` seconds by
:class:`FarmMetrics` (no hook in the scanner needed):

* ``buildmaster_builders{state, processor}``: builders by state (idle, building, failed, ...);
* ``buildmaster_queue_waiting{processor, virtualized}`` and
  ``buildmaster_queue_oldest_wait_seconds{...}``: the queue by kind;
* ``buildmaster_builds_finished_total{state}``: builds that ended, by final state (counted
  from the builds' ``date_finished``, ten seconds behind, so that a statement committing
  late is still counted);
* ``buildmaster_dispatch_latency_seconds``: from a build entering the queue (queued,
  requeued, retried, resumed) to its ``build()`` (its ``dispatched`` event).

These are the farm's, not this master's: with several masters on one database, each one
reports them (take one master's, or ``max``).

The registry is rendered by prometheus-client's ``generate_latest``; its ready-made Twisted
resource is not used because it imports the global reactor and renders in a thread.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import server

from buildmaster.builderstate import BuilderState, builder_state
from buildmaster.enums import BuildStatus
from buildmaster.metrics import LATENCY_BUCKETS, Metrics
from buildmaster.store import Store
from buildmaster.store.database import DatabaseError
from buildmaster.web.health import PlainResource

__all__ = ["FarmMetrics", "MetricsResource"]

#: how far behind "now" finished builds and dispatches are counted
LAG = datetime.timedelta(seconds=10)
#: the kinds of event that put a build (back) in the queue
QUEUEING = ("queued", "requeued", "lost", "given-back", "released", "resumed")

_DISPATCHES_SQL = """
SELECT e.id, extract(epoch FROM e.date - (
    SELECT max(q.date) FROM event q
    WHERE q.build = e.build AND q.id < e.id AND q.kind = ANY(%(queueing)s)))
FROM event e
WHERE e.id > %(after)s AND e.kind = 'dispatched' AND e.date < %(until)s
ORDER BY e.id LIMIT 20000
"""


class _Snapshot(Collector):
    """Gauges from the last reading of the database (label sets come and go with it)."""

    def __init__(self) -> None:
        self.builders: dict[tuple[str, str], int] = {}
        self.waiting: dict[tuple[str, str], int] = {}
        self.oldest: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterable[Metric]:
        builders = GaugeMetricFamily(
            "buildmaster_builders",
            "Builders by state and processor.",
            labels=["state", "processor"],
        )
        for labels, value in sorted(self.builders.items()):
            builders.add_metric(list(labels), value)
        waiting = GaugeMetricFamily(
            "buildmaster_queue_waiting",
            "Waiting builds by processor and virtualization.",
            labels=["processor", "virtualized"],
        )
        for labels, value in sorted(self.waiting.items()):
            waiting.add_metric(list(labels), value)
        oldest = GaugeMetricFamily(
            "buildmaster_queue_oldest_wait_seconds",
            "How long the oldest waiting build has waited, by processor and virtualization.",
            labels=["processor", "virtualized"],
        )
        for labels, seconds in sorted(self.oldest.items()):
            oldest.add_metric(list(labels), seconds)
        return [builders, waiting, oldest]


class FarmMetrics(service.Service):
    """Reads the farm's state from the database every ``interval`` seconds into ``metrics``'s
    registry. A refresh that fails is logged and tried again at the next interval. Finished
    builds and dispatches are counted ``lag`` behind the database's clock."""

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        store: Store,
        metrics: Metrics,
        interval: float = 15.0,
        lag: datetime.timedelta = LAG,
    ) -> None:
        self.clock = clock
        self.store = store
        self.interval = interval
        self.lag = lag
        self._snapshot = _Snapshot()
        registry = metrics.registry
        registry.register(self._snapshot)
        self.finished = Counter(
            "buildmaster_builds_finished",
            "Builds that ended, by final state.",
            ["state"],
            registry=registry,
        )
        self.dispatch_latency = Histogram(
            "buildmaster_dispatch_latency_seconds",
            "From a build entering the queue to its build() on a builder.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._finished_since: datetime.datetime | None = None
        self._last_event: int | None = None
        self._loop = task.LoopingCall(self._safe_refresh)
        self._loop.clock = clock
        self._running: defer.Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        self._running = self._loop.start(self.interval, now=True)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        running, self._running = self._running, None
        return running if running is not None else defer.succeed(None)

    def _safe_refresh(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except DatabaseError as e:
            self._log.warn("Metrics not refreshed: {error}", error=e)
        except Exception:
            self._log.failure("Refreshing the metrics failed")

    async def refresh(self) -> None:
        """Read the farm's state once."""
        await self._read_builders()
        await self._read_queue()
        await self._count_finished()
        await self._observe_dispatches()

    async def _read_builders(self) -> None:
        names = {p.id: p.name for p in await self.store.views.catalog.processors()}
        counts: dict[tuple[str, str], int] = {}
        for state in BuilderState:
            for name in names.values():
                counts[(state.value, name)] = 0
        for snap in await self.store.jobs.snapshots():
            label = builder_state(snap.builder, snap.job).value
            for processor in snap.builder.processor_ids:
                key = (label, names.get(processor, str(processor)))
                counts[key] = counts.get(key, 0) + 1
        self._snapshot.builders = counts

    async def _read_queue(self) -> None:
        waiting, oldest = {}, {}
        for kind in await self.store.views.queue.kinds():
            labels = (kind.processor, "true" if kind.virtualized else "false")
            waiting[labels] = kind.waiting
            if kind.oldest_waiting is not None:
                oldest[labels] = max(0.0, (kind.as_of - kind.oldest_waiting).total_seconds())
            else:
                oldest[labels] = 0.0
        self._snapshot.waiting, self._snapshot.oldest = waiting, oldest

    async def _count_finished(self) -> None:
        rows = await self.store.db.query("SELECT now() - %s", (self.lag,))
        until = rows[0][0]
        since, self._finished_since = self._finished_since, until
        if since is None:  # the first reading: count from here on
            for state in BuildStatus:
                self.finished.labels(state.name)
            return
        for state, count in await self.store.db.query(
            "SELECT buildstate, count(*) FROM build WHERE date_finished >= %s"
            " AND date_finished < %s GROUP BY 1",
            (since, until),
        ):
            self.finished.labels(BuildStatus(state).name).inc(count)

    async def _observe_dispatches(self) -> None:
        if self._last_event is None:
            rows = await self.store.db.query("SELECT coalesce(max(id), 0) FROM event")
            self._last_event = int(rows[0][0])
            return
        until = await self.store.db.query("SELECT now() - %s", (self.lag,))
        rows = await self.store.db.query(
            _DISPATCHES_SQL,
            {"queueing": list(QUEUEING), "after": self._last_event, "until": until[0][0]},
        )
        for event_id, seconds in rows:
            self._last_event = max(self._last_event, int(event_id))
            if seconds is not None:
                self.dispatch_latency.observe(max(0.0, float(seconds)))


class MetricsResource(PlainResource):
    """``GET /metrics``: the registry in Prometheus' text format."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    async def answer(self, request: server.Request) -> None:
        body = generate_latest(self.metrics.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
