"""The farm's counts a minute at a time, for the pages' picture of the last hours.

:class:`FarmSampler` writes, once a minute, a row of ``farm_sample`` for each of the last two
whole minutes: the builds that finished in it (counted from ``build.date_finished`` through
its index: a build committing a little late is counted at the next sample) and the queue's
depth when it is sampled. Rows older than two days are pruned. The table survives restarts;
several masters on one database write the same rows (the finished counts agree, the first
queue depth stays). Nothing in the scanner is involved: the sampler reads what the scans
wrote.
"""

from __future__ import annotations

from typing import Any

from twisted.application import internet
from twisted.internet import defer
from twisted.logger import Logger

from buildmaster.store.database import Database, DatabaseError

__all__ = ["FarmSampler", "SAMPLE_SQL"]

#: the last two whole minutes (the database's clock): builds finished, waiting and running jobs
SAMPLE_SQL = """
INSERT INTO farm_sample (minute, finished, waiting, running)
SELECT m.minute,
    (SELECT count(*) FROM build
     WHERE date_finished >= m.minute AND date_finished < m.minute + interval '1 minute'),
    (SELECT count(*) FROM buildqueue WHERE status = 0 AND builder IS NULL),
    (SELECT count(*) FROM buildqueue WHERE builder IS NOT NULL)
FROM (SELECT date_trunc('minute', now()) - interval '1 minute' * g AS minute
      FROM generate_series(1, 2) g) m
ON CONFLICT (minute) DO UPDATE SET finished = EXCLUDED.finished
"""

PRUNE_SQL = "DELETE FROM farm_sample WHERE minute < now() - interval '2 days'"


class FarmSampler(internet.TimerService):
    """Samples the farm every ``interval`` seconds of ``clock`` (and at start): Twisted's
    ``TimerService``, whose ``stopService`` waits for a sample under way. A sample that
    fails is logged and taken again at the next interval."""

    _log = Logger()

    def __init__(self, clock: Any, db: Database, interval: float = 60.0) -> None:
        super().__init__(interval, self._safe_sample)
        self.clock = clock
        self.db = db

    def _safe_sample(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._sample_logged())

    async def _sample_logged(self) -> None:
        try:
            await self.sample()
        except DatabaseError as e:
            self._log.warn("The farm's counts were not sampled: {error}", error=e)
        except Exception:
            self._log.failure("Sampling the farm's counts failed")

    async def sample(self) -> None:
        """Write the last two minutes' samples, and prune the old ones."""
        await self.db.execute(SAMPLE_SQL)
        await self.db.execute(PRUNE_SQL)
