"""Log tails of running builds, written to the database in batches.

Every scan of a building builder reads its log tail; writing each one at once would be one
UPDATE per builder per scan. Instead the newest tail per job is kept here and
:meth:`LogtailBuffer.flush` writes them all in one statement (the master flushes every
``logtail_interval`` seconds and when it stops).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildmaster.store import Store

__all__ = ["LogtailBuffer"]


class LogtailBuffer:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[int, tuple[int, bytes | None]] = {}

    def add(self, job_id: int, builder_id: int, tail: bytes | None) -> None:
        """Remember the newest tail of a job (older unwritten ones are dropped)."""
        if tail is not None:
            self._pending[job_id] = (builder_id, tail)

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write every pending tail in one statement; returns how many.

        A tail whose job has meanwhile left its builder is not written.
        """
        batch, self._pending = self._pending, {}
        if batch:
            try:
                await self._store.jobs.store_logtails(
                    (job, builder, tail) for job, (builder, tail) in batch.items()
                )
            except BaseException:
                # keep them for the next flush, unless newer ones arrived meanwhile
                for job, value in batch.items():
                    self._pending.setdefault(job, value)
                raise
        return len(batch)
