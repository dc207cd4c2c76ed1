"""Statements shared by the requests that come together.

Under load many callers ask for the same kind of small write at about the same moment
(record a stored file, record a dispatch). Each as its own statement costs a database
connection's round trip and a commit (a WAL flush) apiece; together they cost one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["StatementBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class StatementBatcher(Generic[T, R]):
    """Runs requests in shared statements when they come together.

    At most ``concurrency`` statements are in flight; the requests that arrive meanwhile
    wait and go together in the next one (up to ``max_batch``). A lone request runs at once,
    on its own. When a shared statement fails, its requests are run one by one, so a request
    the database refuses fails alone.

    :param run_many: runs requests in one statement (a lone one too: the same statement
        with one row); returns, in order, each one's result, or the exception its caller
        gets.
    """

    def __init__(
        self,
        run_many: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        concurrency: int = 2,
        max_batch: int = 64,
    ) -> None:
        self._run_many = run_many
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._waiting: list[tuple[T, defer.Deferred[R]]] = []
        self._running = 0
        #: statements run so far (for tests and benchmarks)
        self.statements = 0

    def submit(self, request: T) -> defer.Deferred[R]:
        """Run ``request`` (with others if they come together); fires with its result."""
        d: defer.Deferred[R] = defer.Deferred()
        self._waiting.append((request, d))
        self._start()
        return d

    def _start(self) -> None:
        while self._waiting and self._running < self._concurrency:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            self._running += 1
            d = defer.Deferred.fromCoroutine(self._run([request for request, _ in batch]))
            d.addBoth(self._done, [answer for _, answer in batch])

    def _done(self, results: list[R | Failure] | Failure, answers: list[defer.Deferred[R]]) -> None:
        # free the slot (and start what waits) before answering: callers that submit again
        # at once queue behind what was waiting
        self._running -= 1
        self._start()
        if isinstance(results, Failure):  # never: _run catches what a statement raises
            results = [results] * len(answers)
        for answer, result in zip(answers, results, strict=True):
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

    async def _run(self, requests: list[T]) -> list[R | Failure]:
        if len(requests) > 1:
            self.statements += 1
            try:
                shared = await self._run_many(requests)
            except Exception:
                pass  # one by one below: each request gets its own answer
            else:
                if len(shared) == len(requests):
                    return [_answer(r) for r in shared]
                # (never: each run_many answers every request) one by one below
        results: list[R | Failure] = []
        for request in requests:
            self.statements += 1
            try:
                [result] = await self._run_many([request])
            except Exception:
                results.append(Failure())
            else:
                results.append(_answer(result))
        return results


def _answer(result: R | BaseException) -> R | Failure:
    return Failure(result) if isinstance(result, BaseException) else result
