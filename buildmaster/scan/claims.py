"""Claiming a builder's next job: which kinds of builder have no waiting job, which idle
builders wait for one (:class:`Openings`), and one claim at a time per kind
(:class:`ClaimGate`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet import defer

__all__ = ["EMPTY_CACHE_LIFETIME", "ClaimGate", "Key", "Openings", "Waiter"]

#: a kind of builder: (processor id, virtualized)
Key = tuple[int, bool]
#: seconds a "no waiting job of this kind" verdict is trusted without a notification
EMPTY_CACHE_LIFETIME = 60.0


class ClaimGate:
    """One claim at a time per kind of builder, while others of that kind wait for its answer.

    At a master's first scan (and whenever its "no waiting job" knowledge is renewed) every
    idle builder would ask the database for a job at once, a thousand queries where one
    answers for all. With the gate, a builder whose kind is being asked for waits for that
    answer: nothing found means nothing to find; a job found means it is its turn to ask.
    """

    def __init__(self, enabled: Callable[[], bool]) -> None:
        self._enabled = enabled
        self._pending: dict[tuple[Key, ...], defer.Deferred[bool]] = {}
        self._found: dict[tuple[Key, ...], bool] = {}

    async def wait_turn(self, keys: tuple[Key, ...]) -> bool:
        """Wait for a claim in flight for ``keys``; ``False`` if it found nothing.

        While the last claim for ``keys`` found a job there is no herd to hold back: go.
        """
        if self._found.get(keys, False):
            return True
        while self._enabled() and keys in self._pending:
            answer: defer.Deferred[bool] = defer.Deferred()

            def tell(found: bool, answer: defer.Deferred[bool] = answer) -> bool:
                answer.callback(found)
                return found

            self._pending[keys].addCallback(tell)
            if not await answer:
                return False
        return True

    def begin(self, keys: tuple[Key, ...]) -> defer.Deferred[bool]:
        done: defer.Deferred[bool] = defer.Deferred()
        self._pending[keys] = done
        return done

    def end(self, keys: tuple[Key, ...], done: defer.Deferred[bool], found: bool) -> None:
        self._found[keys] = found
        if self._pending.get(keys) is done:
            del self._pending[keys]
        done.callback(found)


class Waiter(Protocol):
    """An idle builder's worker, as :class:`Openings` sees it."""

    idle_keys: tuple[Key, ...]

    @property
    def idle(self) -> bool: ...

    @property
    def keys(self) -> tuple[Key, ...]: ...

    @property
    def builder_id(self) -> int: ...

    def request_scan(self) -> defer.Deferred[None]: ...


class Openings:
    """Which kinds of builder have no waiting job, which idle builders wait for one, and one
    claim at a time per kind (:attr:`claims`).

    A kind known to have no waiting job is not asked for one again until a notification
    (``NOTIFY buildqueue_waiting``) says a job of that kind waits (:meth:`job_waiting`), or
    until :data:`EMPTY_CACHE_LIFETIME` has passed; that knowledge is trusted only while
    notifications arrive (``listening``). Idle builders are kept in a set per kind, so waking
    one costs nothing with a busy farm, however large.

    :param listening: whether notifications arrive.
    :param works: whether this master works a builder (by id).
    """

    def __init__(
        self, clock: Any, listening: Callable[[], bool], works: Callable[[int], bool]
    ) -> None:
        self._clock = clock
        self._listening = listening
        self._works = works
        self.claims = ClaimGate(listening)
        self._empty: set[Key] = set()
        self._empty_since = clock.seconds()
        self._generation: dict[Key, int] = {}
        self._idle: dict[Key, set[Waiter]] = {}

    def job_waiting(self, keys: Iterable[Key], count: int) -> None:
        """Jobs of these kinds wait (up to ``count``): wake as many idle builders."""
        keys = list(keys)
        for key in keys:
            self._generation[key] = self._generation.get(key, 0) + 1
            self._empty.discard(key)
        self.wake(keys, count=count)

    @property
    def empty_keys(self) -> set[Key]:
        """The kinds known to have no waiting job."""
        return set(self._empty)

    def expire(self) -> None:
        """A safety net: ask the database again now and then, whatever the notifications
        said (every :data:`EMPTY_CACHE_LIFETIME` seconds)."""
        if self._clock.seconds() - self._empty_since >= EMPTY_CACHE_LIFETIME:
            self._empty.clear()
            self._empty_since = self._clock.seconds()

    def known_empty(self, keys: Iterable[Key]) -> bool:
        """Whether no job of these kinds waits (trusted only while notifications arrive)."""
        keys = tuple(keys)
        return self._listening() and bool(keys) and self._empty.issuperset(keys)

    def generations(self, keys: Iterable[Key]) -> dict[Key, int]:
        return {k: self._generation.get(k, 0) for k in keys}

    def mark_empty(self, keys: Iterable[Key], generations: dict[Key, int]) -> None:
        """No waiting job of these kinds, unless a notification came in since ``generations``."""
        for key in keys:
            if self._generation.get(key, 0) == generations.get(key, 0):
                self._empty.add(key)

    def wake(self, keys: Iterable[Key], exclude: object = None, count: int = 1) -> None:
        """Have up to ``count`` idle builders of these kinds look for a job now."""
        woken = 0
        for key in keys:
            for worker in list(self._idle.get(key, ())):
                if woken >= count:
                    return
                if worker is exclude or not worker.idle or not self._works(worker.builder_id):
                    continue
                self.forget_idle(worker)
                worker.request_scan()
                woken += 1

    def note_idle(self, worker: Waiter, listed: bool) -> None:
        """A worker finished a scan: list it under its kinds if it can take a job (and the
        master still lists it: ``listed``)."""
        self.forget_idle(worker)
        if worker.idle and listed:
            worker.idle_keys = worker.keys
            for key in worker.idle_keys:
                self._idle.setdefault(key, set()).add(worker)

    def forget_idle(self, worker: Waiter) -> None:
        for key in worker.idle_keys:
            self._idle.get(key, set()).discard(worker)
        worker.idle_keys = ()
