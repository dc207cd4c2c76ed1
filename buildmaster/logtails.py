"""Log tails of running builds (and builders' versions), written to the database in batches.

Every scan of a building builder reads its log tail; writing each one at once would be one
UPDATE per builder per scan. Instead the newest tail per job is kept here and
:meth:`LogtailBuffer.flush` writes them all in one statement (the master flushes every
``logtail_interval`` seconds and when it stops). The version each builder reports is kept
the same way (a master's first scan would otherwise write a thousand of them one by one).
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
        self._versions: dict[int, str] = {}

    def set_version(self, builder_id: int, version: str) -> None:
        """Remember the version a builder reports (written at the next flush)."""
        self._versions[builder_id] = version

    def add(self, job_id: int, builder_id: int, tail: bytes | None) -> None:
        """Remember the newest tail of a job (older unwritten ones are dropped)."""
        if tail is not None:
            self._pending[job_id] = (builder_id, tail)

    def pending(self, job_id: int) -> str | None:
        """The job's newest tail not yet written (as the database will have it), or ``None``."""
        entry = self._pending.get(job_id)
        if entry is None or entry[1] is None:
            return None
        tail = entry[1]
        text = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
        return text.replace("\x00", "")

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write every pending tail in one statement; returns how many.

        A tail whose job has meanwhile left its builder is not written.
        """
        versions, self._versions = self._versions, {}
        if versions:
            try:
                await self._store.jobs.set_versions(versions)
            except BaseException:
                for builder, version in versions.items():
                    self._versions.setdefault(builder, version)
                raise
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
