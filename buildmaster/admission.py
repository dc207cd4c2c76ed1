"""How many finished builds the master takes on at once.

A finished build costs the master a burst of work, its *collection*: fetch the log and the
results, store them, record the end of the build, clean the builder, claim and dispatch its
next job. When builders finish faster than the master can collect, starting every collection
the moment a poll finds it only makes each one slower: they share the master's CPU, its
database connections and its librarian threads, so every collection takes longer (Little's
law: the same throughput, more in flight, each one longer), and the builders are polled
again and again while their collections queue up.

:class:`Admission` keeps the collections in flight under a limit and makes the rest of the
farm wait *before* it is polled, in turn: the routine polls of building builders (the polls
that discover finished builds) wait, first come first served, while the collections in flight
plus the polls in flight (weighted by the share of recent polls that found a finished build)
reach the limit. A collection that starts then runs at once, without queueing behind hundreds
of others; a builder's turn comes in the order it became due. Without overload nothing waits:
few polls find a finished build, so their weight is small. A collection counts from the poll
that finds the build finished until the builder has its next build (its ``build()`` answered;
recording the dispatch is bookkeeping after the hand-over), or until the scan ends without one.

Nothing holds the gate for long: a collection or a poll counts for at most ``lease`` seconds.
A collection of big files (minutes of download, bound by the network, not by the master) or a
builder that does not answer its poll stops counting then, and the others go on.

It is used only when ``MasterConfig.max_collections`` is set (``--max-collections``): each
collection is then quick, and the master completes fewer builds per second than without a
limit (measured in benchmarks/results/master.md; docs/design.md says why no limit is the
default).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Admission"]

#: how fast the share of polls that find a finished build follows the latest polls
SHARE_WEIGHT = 0.1


class Admission:
    """Counts collections and routine polls in flight, each for at most ``lease`` seconds.

    :param clock: IReactorTime.
    :param limit: collections in flight at most (0: no limit; everything is admitted).
    :param lease: seconds a collection or a poll counts at most.
    :param on_free: called (no arguments) whenever something stops counting, so waiting
        polls can be admitted.
    """

    def __init__(self, clock: Any, limit: int, lease: float, on_free: Callable[[], object]) -> None:
        self.clock = clock
        self.limit = limit
        self.lease = lease
        self.on_free = on_free
        #: the share of recent routine polls that found a finished build (at first: assume
        #: every poll may, until polls show otherwise)
        self.share = 1.0
        self._collections: dict[Hashable, Any] = {}  # key -> the lease's IDelayedCall
        self._polls: dict[Hashable, Any] = {}  # key -> its lease's IDelayedCall or None (over)
        self._counting = 0  # polls whose lease is not over
        #: the most collections counted at once (for operators and benchmarks)
        self.peak = 0

    @property
    def collections(self) -> int:
        """Collections counting now."""
        return len(self._collections)

    @property
    def polls(self) -> int:
        """Routine polls counting now (admitted, unanswered, lease not over)."""
        return self._counting

    @property
    def load(self) -> float:
        """The collections in flight, plus those the polls in flight are expected to start."""
        return len(self._collections) + self.share * self._counting

    def may_poll(self) -> bool:
        """Whether one more routine poll fits."""
        if self.limit <= 0:
            return True
        return len(self._collections) < self.limit and self.load + self.share <= self.limit

    def poll_started(self, key: Hashable) -> None:
        """A routine poll was admitted and sent."""
        if self.limit <= 0:
            return
        self._end_poll(key)
        self._polls[key] = self.clock.callLater(self.lease, self._poll_lease_over, key)
        self._counting += 1

    def poll_answered(self, key: Hashable, finished: bool) -> None:
        """The answer to an admitted poll came (``finished``: the builder is WAITING)."""
        if key not in self._polls:
            return  # not an admitted poll
        self.share += SHARE_WEIGHT * ((1.0 if finished else 0.0) - self.share)
        self._end_poll(key)
        self.on_free()

    def poll_done(self, key: Hashable) -> None:
        """The scan of an admitted poll is over, answered or not."""
        if key in self._polls:
            self._end_poll(key)
            self.on_free()

    def collection_started(self, key: Hashable) -> None:
        if self.limit <= 0:
            return
        self._end_collection(key)
        self._collections[key] = self.clock.callLater(self.lease, self._collection_lease_over, key)
        self.peak = max(self.peak, len(self._collections))

    def collection_ended(self, key: Hashable) -> None:
        if key in self._collections:
            self._end_collection(key)
            self.on_free()

    def clear(self) -> None:
        """Forget everything (the master stops)."""
        for key in list(self._collections):
            self._end_collection(key)
        for key in list(self._polls):
            self._end_poll(key)

    def _end_poll(self, key: Hashable) -> None:
        call = self._polls.pop(key, None)
        if call is not None:
            self._counting -= 1
            if call.active():
                call.cancel()

    def _end_collection(self, key: Hashable) -> None:
        call = self._collections.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def _poll_lease_over(self, key: Hashable) -> None:
        if self._polls.get(key) is not None:
            self._polls[key] = None  # still admitted (its answer updates the share)
            self._counting -= 1
            self.on_free()

    def _collection_lease_over(self, key: Hashable) -> None:
        self._collections.pop(key, None)
        self.on_free()
