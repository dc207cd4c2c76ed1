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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

__all__ = ["OWNERSHIP_LOCK", "Ownership", "OwnershipLost"]

#: pg_advisory_lock namespace for builder ownership ("bm" "bldr")
OWNERSHIP_LOCK = 0x626D_626C


class OwnershipLost(Exception):
    """This master no longer holds the builder's lock: it must not act on the builder."""


class Ownership:
    """The builders this master holds, and since when (the ``epoch``: one per session).

    :param db: the :class:`~buildmaster.store.database.Database` whose session holds the
        locks.
    :param exclusive: whether locks matter (``False``: every builder is this master's).
    :param on_lost: called when the session is found lost (after the builders are given
        up), to cut the work in flight.
    """

    _log = Logger()

    def __init__(self, db: Any, exclusive: bool, on_lost: Callable[[], object]) -> None:
        self._db = db
        self.exclusive = exclusive
        self._on_lost = on_lost
        #: the builders whose lock this master's session holds
        self.owned: set[int] = set()
        #: bumped whenever the session is lost
        self.epoch = 0
        if exclusive:
            db.on_session_dropped(self.lost)

    def holds(self, builder_id: int) -> bool:
        """Whether this master works the builder now."""
        return not self.exclusive or builder_id in self.owned

    def still(self, builder_id: int, epoch: int) -> bool:
        """Whether this master still holds the builder it held in ``epoch``."""
        return not self.exclusive or (epoch == self.epoch and builder_id in self.owned)

    async def acquire(self, builder_ids: Iterable[int]) -> set[int]:
        """Take the locks of those of ``builder_ids`` that no other master holds; returns
        every builder this master holds.

        :raises DatabaseError: when the session cannot be reached (nothing is worked then).
        """
        if not self.exclusive:
            return set(builder_ids)
        wanted = [b for b in builder_ids if b not in self.owned]
        if wanted:
            epoch = self.epoch
            rows = await self._db.session_query(
                "SELECT id FROM unnest(%s::integer[]) AS id WHERE pg_try_advisory_lock(%s, id)",
                (wanted, OWNERSHIP_LOCK),
            )
            if epoch != self.epoch:
                return self.owned  # the session was lost meanwhile: those locks went with it
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
        if held:
            # an info: the database's own line (an outage, a WARNING) says what went wrong
            self._log.info(
                "Lost the database session holding {count} builders' locks: not working"
                " them until it holds them again",
                count=held,
            )
        self._on_lost()
