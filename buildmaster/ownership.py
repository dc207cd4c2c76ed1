"""Which builders this master works: those whose advisory lock its database session holds.

With several masters on one database, each builder is worked by one master at a time: the
one whose session holds the builder's session-level advisory lock (namespace
:data:`OWNERSHIP_LOCK`, the builder's id as the key). A master that dies frees its builders
with its session.

Ownership fails closed. The moment the session is found lost (the server terminated it,
the connection dropped), its locks are gone, and another master may take the builders at
once: this master stops working every one of them there and then (:meth:`Ownership.lost`
cuts the calls in flight; :class:`OwnershipLost` stops every call after), and works them
again only once its new session holds their locks again. A piece of work started under the
old session never goes on under the new one (each takes the ``epoch`` it started in).

A connection cut silently (packets dropped, nothing reset) is not "found" lost: the master
would go on while the server, once its keepalives give up, ends the session and frees the
locks. Hence the *lease*: the master confirms its session with a cheap statement every
``lease / 5`` seconds; the session is known alive at the moment such a statement was sent
(its answer proves it). Once ``lease`` seconds have passed since the last confirmed one
(on the injected clock), the master stops working every builder and abandons that session
for a new one. The session itself is set up (:meth:`Database.fence_session`) so that the
server ends it only after ``2 x lease`` of silence: the master always gives its builders up
first (docs/design.md, "Several masters", has the numbers).

The same statement counts the masters present (each session takes a presence lock,
namespace :data:`PRESENCE_LOCK`) and the active builders: each master holds at most its share
(``ceil(builders / masters)``) and gives idle builders back when it holds more, so that a
master that joins, or comes back, gets its part of the farm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

__all__ = ["DEFAULT_LEASE", "OWNERSHIP_LOCK", "PRESENCE_LOCK", "Ownership", "OwnershipLost"]

#: pg_advisory_lock namespace for builder ownership ("bm" "bldr")
OWNERSHIP_LOCK = 0x626D_626C
#: pg_advisory_lock namespace of the masters' presence ("bm" "ms"), the backend pid as key
PRESENCE_LOCK = 0x626D_6D73
#: seconds a master works its builders past the last statement its session confirmed
DEFAULT_LEASE = 10.0
#: the lease is renewed this many times within its length
RENEWALS_PER_LEASE = 5

_PRESENT = "SELECT pg_advisory_lock(%s, pg_backend_pid())"
_CENSUS = (
    "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = %s::oid AND objsubid = 2"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
    " (SELECT count(*) FROM builder WHERE active)"
)


class OwnershipLost(Exception):
    """This master no longer holds the builder's lock: it must not act on the builder."""


class Ownership:
    """The builders this master holds, and since when (the ``epoch``: one per session).

    :param db: the :class:`~buildmaster.store.database.Database` whose session holds the
        locks.
    :param exclusive: whether locks matter (``False``: every builder is this master's).
    :param on_lost: called when the session is found lost (after the builders are given
        up), to cut the work in flight.
    :param clock: IReactorTime of the lease (default: the database's reactor).
    :param lease: seconds the builders are worked past the session's last confirmation.
    :param releasable: the builders that may be given to another master right now (no
        call in flight to them), the idle ones first.
    :param on_room: called when this master's share grew (a master left): it may take
        builders now, without waiting for their turn in the scan.
    """

    _log = Logger()

    def __init__(
        self,
        db: Any,
        exclusive: bool,
        on_lost: Callable[[], object],
        clock: Any = None,
        lease: float = DEFAULT_LEASE,
        releasable: Callable[[], Iterable[int]] | None = None,
        on_room: Callable[[], object] | None = None,
    ) -> None:
        self._db = db
        self.exclusive = exclusive
        self._on_lost = on_lost
        self._clock = db.clock if clock is None else clock
        self.lease = lease
        self._releasable = releasable
        self._on_room = on_room
        #: the builders whose lock this master's session holds
        self.owned: set[int] = set()
        #: bumped whenever the session is lost
        self.epoch = 0
        #: when the last statement the session answered was sent (``None``: not since the
        #: last loss)
        self.confirmed_at: float | None = None
        #: masters present and active builders, as last counted (``None``: not yet)
        self.masters: int | None = None
        self.builders: int | None = None
        self._expiry: Any = None
        self._renewing = False
        self._present_epoch = -1
        self._acquiring = defer.DeferredLock()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        if exclusive:
            db.on_session_dropped(self.lost)
            db.fence_session(lease)

    # -- the gate ------------------------------------------------------------------------

    def holds(self, builder_id: int) -> bool:
        """Whether this master works the builder now."""
        return not self.exclusive or builder_id in self.owned

    def still(self, builder_id: int, epoch: int) -> bool:
        """Whether this master still holds the builder it held in ``epoch`` (and its lease
        runs)."""
        if not self.exclusive:
            return True
        return epoch == self.epoch and builder_id in self.owned and self.leased

    @property
    def leased(self) -> bool:
        """Whether the session was confirmed less than ``lease`` seconds ago."""
        confirmed = self.confirmed_at
        return confirmed is not None and self._clock.seconds() - confirmed < self.lease

    @property
    def share(self) -> int | None:
        """How many builders this master may hold (``None``: not counted yet)."""
        if self.masters is None or self.builders is None:
            return None
        return math.ceil(self.builders / max(1, self.masters))

    # -- the lease -----------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Start renewing the lease; fires once the first renewal is over (whatever its
        outcome: the lease then decides)."""
        if not self.exclusive or self._loop.running:
            return defer.succeed(None)
        self._loop.start(self.lease / RENEWALS_PER_LEASE, now=False)
        return defer.Deferred.fromCoroutine(self._renew())

    def stop(self) -> None:
        """Stop renewing (the master stops)."""
        if self._loop.running:
            self._loop.stop()
        self._cancel_expiry()

    def _confirm(self, sent: float, epoch: int) -> None:
        """A statement sent at ``sent`` came back: the session lived then."""
        if epoch != self.epoch or (self.confirmed_at is not None and sent <= self.confirmed_at):
            return
        self.confirmed_at = sent
        self._cancel_expiry()
        if not self._loop.running:
            return  # not started (driven by hand), or stopped: nothing to give up
        self._expiry = self._clock.callLater(
            max(0.0, sent + self.lease - self._clock.seconds()), self._expire
        )

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        held = len(self.owned)
        self._log.warn(
            "The database session did not answer within its lease ({lease:g} s): not working"
            " its {count} builders; opening a new session",
            lease=self.lease,
            count=held,
        )
        if not self._db.abandon_session():  # which reports the loss, if a session was open
            self.lost()

    def _tick(self) -> None:
        # not waited for: a renewal that never comes back must not stop the next ones
        defer.Deferred.fromCoroutine(self._renew())

    async def _renew(self) -> None:
        if self._renewing:
            return  # the last one has not come back: the expiry decides
        self._renewing = True
        epoch = self.epoch
        sent = self._clock.seconds()
        try:
            if self._present_epoch != epoch:
                await self._db.session_query(_PRESENT, (PRESENCE_LOCK,))
                if epoch != self.epoch:
                    return
                self._present_epoch = epoch
                sent = self._clock.seconds()
            rows = await self._db.session_query(_CENSUS, (PRESENCE_LOCK,))
            if epoch != self.epoch:
                return
            self._confirm(sent, epoch)
            before = self.share
            self.masters, self.builders = int(rows[0][0]), int(rows[0][1])
            share = self.share
            if before is not None and share is not None and share > before and self._on_room:
                self._on_room()
            await self._rebalance(epoch)
        except Exception as e:
            # an outage is logged by the pool, a dropped session by lost(): the lease decides
            if not self._db.explains(e):
                self._log.info("The database session was not confirmed: {error}", error=e)
        finally:
            if epoch == self.epoch:
                self._renewing = False

    async def _rebalance(self, epoch: int) -> None:
        """Give idle builders back while holding more than this master's share."""
        share = self.share
        if share is None or self._releasable is None or len(self.owned) <= share:
            return
        excess = len(self.owned) - share
        given = [b for b in self._releasable() if b in self.owned][:excess]
        if not given:
            return
        self.owned.difference_update(given)  # not worked from here on
        await self._db.session_query(
            "SELECT pg_advisory_unlock(%s, id) FROM unnest(%s::integer[]) AS id",
            (OWNERSHIP_LOCK, given),
        )
        if epoch == self.epoch:
            self._log.info(
                "Gave {count} builders back for other masters to take ({masters} masters"
                " share {builders} builders)",
                count=len(given),
                masters=self.masters,
                builders=self.builders,
            )

    # -- taking and losing ---------------------------------------------------------------

    async def acquire(self, builder_ids: Iterable[int]) -> set[int]:
        """Take the locks of those of ``builder_ids`` that no other master holds, up to this
        master's share; returns every builder this master holds.

        :raises DatabaseError: when the session cannot be reached (nothing is worked then).
        """
        if not self.exclusive:
            return set(builder_ids)
        # one at a time: two taking at once would each fill the room left
        ids = list(builder_ids)
        return await self._acquiring.run(lambda: defer.Deferred.fromCoroutine(self._acquire(ids)))

    async def _acquire(self, builder_ids: list[int]) -> set[int]:
        wanted = [b for b in builder_ids if b not in self.owned]
        share = self.share
        room = len(wanted) if share is None else min(len(wanted), share - len(self.owned))
        if room > 0:
            epoch = self.epoch
            sent = self._clock.seconds()
            rows = await self._db.session_query(
                "SELECT id FROM unnest(%s::integer[]) AS id"
                " WHERE pg_try_advisory_lock(%s, id) LIMIT %s",
                (wanted, OWNERSHIP_LOCK, room),
            )
            if epoch != self.epoch:
                return self.owned  # the session was lost meanwhile: those locks went with it
            self._confirm(sent, epoch)
            taken = {r[0] for r in rows}
            if taken and epoch > 0 and not self.owned:
                self._log.info(
                    "Holding builders again after the loss of the database session:"
                    " {count} builders",
                    count=len(taken),
                )
            self.owned.update(taken)
        return self.owned

    def lost(self) -> None:
        """The session is gone, and every lock with it: stop working those builders now."""
        held = len(self.owned)
        self.owned.clear()
        self.epoch += 1
        self.confirmed_at = None
        self._renewing = False
        self._cancel_expiry()
        if held:
            # an info: the database's own line (an outage, a WARNING) says what went wrong
            self._log.info(
                "Lost the database session holding {count} builders' locks: not working"
                " them until it holds them again",
                count=held,
            )
        self._on_lost()
