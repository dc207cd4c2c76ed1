"""The farm's per-minute counts (builds finished, queue depth) over the last hours."""

from __future__ import annotations

import datetime

import attrs

from buildmaster.store.database import Database

__all__ = ["FarmSample", "FarmHistory", "SampleViews"]


@attrs.frozen
class FarmSample:
    """One minute of the farm: the builds that finished in it, the queue when it was sampled."""

    minute: datetime.datetime
    finished: int
    waiting: int
    running: int


@attrs.frozen
class FarmHistory:
    """The samples of a span of time, oldest first (minutes without a sample are missing:
    no master ran then)."""

    since: datetime.datetime
    until: datetime.datetime
    samples: tuple[FarmSample, ...]


class SampleViews:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def history(self, hours: float = 6.0) -> FarmHistory:
        """The samples of the last ``hours`` (by the database's clock)."""
        rows = await self._db.query(
            "SELECT date_trunc('minute', now()) - make_interval(secs => %(seconds)s),"
            " date_trunc('minute', now()),"
            " coalesce((SELECT array_agg(ARRAY[extract(epoch FROM minute)::bigint, finished,"
            "  waiting, running] ORDER BY minute) FROM farm_sample"
            "  WHERE minute >= date_trunc('minute', now()) - make_interval(secs => %(seconds)s)),"
            "  '{}')",
            {"seconds": hours * 3600.0},
            prepared=True,
        )
        since, until, values = rows[0]
        samples = tuple(
            FarmSample(
                datetime.datetime.fromtimestamp(epoch, datetime.UTC),
                int(finished),
                int(waiting),
                int(running),
            )
            for epoch, finished, waiting, running in values
        )
        return FarmHistory(since, until, samples)
