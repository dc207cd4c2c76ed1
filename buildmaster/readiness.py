"""Whether a service has finished starting, for any number of waiters.

A service's start-up is one Deferred; only one party can consume its result. A
:class:`Readiness` watches that Deferred (its result is passed on untouched) and hands every
caller of :meth:`Readiness.wait` a Deferred of its own, fired at once when the start is
already over.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["Readiness"]

_PENDING = object()


class Readiness:
    """The outcome of a service's start, told to whoever asks, before or after it is known."""

    def __init__(self) -> None:
        self._outcome: Any = _PENDING  # None (started) or a Failure (could not start)
        self._waiters: list[defer.Deferred[None]] = []

    def watch(self, starting: defer.Deferred[Any]) -> None:
        """Follow a (new) start: its outcome replaces any earlier one.

        ``starting``'s own result is passed on untouched, and the waiters are told only once
        the callbacks added to it after this call have seen the outcome (say, logged the
        error that stopped the start).
        """
        self._outcome = _PENDING
        starting.addBoth(self._settle, starting)

    def _settle(self, result: Any, starting: defer.Deferred[Any]) -> Any:
        self._outcome = result if isinstance(result, Failure) else None
        starting.addBoth(self._tell_waiters)  # after the rest of the chain
        return result

    def _tell_waiters(self, result: Any) -> Any:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._tell(waiter)
        return result

    def _tell(self, waiter: defer.Deferred[None]) -> None:
        if isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(None)

    def wait(self) -> defer.Deferred[None]:
        """Fires with ``None`` once the service runs; fails with the error that stopped it
        from starting. Before the start began, it waits for it."""
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._outcome is _PENDING:
            self._waiters.append(waiter)
        else:
            self._tell(waiter)
        return waiter
