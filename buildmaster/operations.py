"""The operations on builds and builders, for a process that holds no builder (a web-only
process, :mod:`buildmaster.service`), and how any process has the master holding a builder
look at it now.

Every operation is a change in the database (:mod:`buildmaster.store`). Some want the
builder's master to act at once rather than at its next poll: a running build that is
cancelled must be aborted on its builder, a builder taken out of manual mode or enabled may
take a waiting job, and a builder disabled, moved to another URL or given other processors
is to be seen that way before its next poll. The master that holds the builder (:mod:`buildmaster.ownership`) does so
itself; any other process, once the change is committed, sends ``NOTIFY builder_scan`` with
the builder's id, and the master that holds it (every master LISTENs) scans that builder
(:meth:`buildmaster.master.BuilddMaster.scan_wanted`). A notification lost (no master
listening, a session that dropped) costs only time: the next scan sees the change anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.logger import Logger

from buildmaster.enums import BuildStatus
from buildmaster.model import Builder, BuildQueue, DistroArchSeries, HasId
from buildmaster.store import Store
from buildmaster.store.database import DatabaseError

__all__ = ["SCAN_CHANNEL", "FarmOperations", "parse_scan_wanted"]

#: the channel of "scan this builder now": the payload is the builder's id
SCAN_CHANNEL = "builder_scan"


def parse_scan_wanted(payload: str) -> int | None:
    """The builder id a ``builder_scan`` notification names; ``None`` for anything else
    (the empty payload after a reconnection, or a payload not ours)."""
    text = payload.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


class FarmOperations:
    """The operations of :class:`~buildmaster.web.api.context.Operations` carried out through
    the database alone, the builders' masters told through ``NOTIFY`` (see the module's
    docstring). What each fires with and fails with: as
    :class:`~buildmaster.master.BuilddMaster`'s operations of the same name."""

    _log = Logger()

    def __init__(
        self, store: Store, wake: Callable[[int], defer.Deferred[None]] | None = None
    ) -> None:
        self.store = store
        #: has a builder looked at now: :meth:`wake_owner` (NOTIFY), unless a master that
        #: may hold the builder itself passes its own
        self._wake = wake or self.wake_owner

    def wake_owner(self, builder_id: int) -> defer.Deferred[None]:
        """Have the master that holds the builder scan it now (whichever process that is).

        Fires with ``None``, also when the notification could not be sent (logged: the
        change is committed, and that master sees it at its next scan anyway)."""
        return defer.Deferred.fromCoroutine(self._wake_owner(builder_id))

    async def _wake_owner(self, builder_id: int) -> None:
        try:
            await self.store.db.notify(SCAN_CHANNEL, str(builder_id))
        except DatabaseError as e:
            self._log.warn(
                "The master of builder {builder} was not told to look at it now ({error}):"
                " it will at its next scan",
                builder=builder_id,
                error=e,
            )

    def cancel(self, build: HasId | int) -> defer.Deferred[BuildStatus]:
        return defer.Deferred.fromCoroutine(self._cancel(build))

    async def _cancel(self, build: HasId | int) -> BuildStatus:
        state = await self.store.jobs.cancel(build)
        if state is BuildStatus.CANCELLING:
            job = await self.store.queue.get_for_build(build)
            if job is not None and job.builder_id is not None:
                await self._wake(job.builder_id)
        return state

    def retry(self, build: HasId | int) -> defer.Deferred[BuildQueue]:
        # the queue's own NOTIFY (buildqueue_waiting) wakes an idle builder
        return defer.Deferred.fromCoroutine(self.store.jobs.retry(build))

    def rescore(self, build: HasId | int, score: int) -> defer.Deferred[BuildQueue]:
        return defer.Deferred.fromCoroutine(self.store.jobs.rescore(build, score))

    def set_manual(self, builder: HasId | int, manual: bool) -> defer.Deferred[Builder]:
        return defer.Deferred.fromCoroutine(self._set_manual(builder, manual))

    async def _set_manual(self, builder: HasId | int, manual: bool) -> Builder:
        fresh = await self.store.builders.set_manual(builder, manual)
        await self.wake_owner(fresh.id)
        return fresh

    def builder_changed(self, builder: HasId | int) -> defer.Deferred[None]:
        return self._wake(builder if isinstance(builder, int) else builder.id)

    def addOrUpdateChroot(
        self, distroarchseries: HasId | int, chroot: HasId | int
    ) -> defer.Deferred[DistroArchSeries]:
        return defer.Deferred.fromCoroutine(self._add_or_update_chroot(distroarchseries, chroot))

    async def _add_or_update_chroot(
        self, distroarchseries: HasId | int, chroot: HasId | int
    ) -> DistroArchSeries:
        das = await self.store.distributions.addOrUpdateChroot(distroarchseries, chroot)
        # the jobs go back in the queue, whose NOTIFY wakes the idle builders
        await self.store.jobs.resume_suspended(das)
        return das
