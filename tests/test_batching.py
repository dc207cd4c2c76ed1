"""StatementBatcher's rules on their own (the statements it runs for the librarian, the
dispatches and the ends of builds are tested against PostgreSQL in test_librarian_records
and test_store): requests that come together share a run, a lone one runs at once (a run
of one), and when a shared run fails or answers wrongly each request is run alone."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

from buildmaster.store.batching import StatementBatcher


class Runs:
    """Each run waits until the test lets it finish, then answers ``"<request>!"``; a request
    named ``"bad"`` is refused; runs of several can be made to fail or answer too few."""

    def __init__(self) -> None:
        self.log: list[list[str]] = []
        self.pending: list[defer.Deferred[None]] = []
        self.shared_fails = False
        self.shared_short = False

    async def many(self, requests: list[str]) -> list[str | BaseException]:
        self.log.append(list(requests))
        await self._wait()
        if self.shared_fails and len(requests) > 1:
            raise RuntimeError("deadlock detected")
        answers: list[str | BaseException] = [
            ValueError(r) if r == "bad" else f"{r}!" for r in requests
        ]
        return answers[:-1] if self.shared_short and len(requests) > 1 else answers

    async def _wait(self) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        self.pending.append(d)
        await d

    def finish_all(self) -> None:
        """Let the runs in progress finish (not those they start)."""
        current, self.pending = self.pending, []
        for d in current:
            d.callback(None)


def outcomes(ds: list[defer.Deferred[str]]) -> list[object]:
    results: list[object] = []
    for d in ds:
        d.addBoth(results.append)
    return results


def test_a_lone_request_runs_at_once_and_those_that_wait_share_a_run() -> None:
    runs = Runs()
    batcher = StatementBatcher(runs.many, concurrency=1)
    results = outcomes([batcher.submit(r) for r in ("a", "b", "c", "d")])
    assert runs.log == [["a"]]  # alone, at once; the others wait for it
    runs.finish_all()
    assert runs.log == [["a"], ["b", "c", "d"]]
    runs.finish_all()
    assert results == ["a!", "b!", "c!", "d!"] and batcher.statements == 2


def test_a_refused_request_fails_alone_in_a_shared_run() -> None:
    runs = Runs()
    batcher = StatementBatcher(runs.many, concurrency=1)
    results = outcomes([batcher.submit(r) for r in ("a", "b", "bad", "c")])
    runs.finish_all()
    runs.finish_all()
    assert results[:2] == ["a!", "b!"] and results[3] == "c!"
    assert isinstance(results[2], Failure) and results[2].check(ValueError)


def test_a_failed_or_short_shared_run_is_retried_request_by_request() -> None:
    for fault in ("shared_fails", "shared_short"):
        runs = Runs()
        setattr(runs, fault, True)
        batcher = StatementBatcher(runs.many, concurrency=1)
        results = outcomes([batcher.submit(r) for r in ("a", "b", "bad", "c")])
        while runs.pending:
            runs.finish_all()
        assert runs.log == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]], fault
        assert results[:2] == ["a!", "b!"] and results[3] == "c!"
        assert isinstance(results[2], Failure) and results[2].check(ValueError)
        assert batcher.statements == 5


def test_batches_are_at_most_max_batch_and_at_most_concurrency_run_at_once() -> None:
    runs = Runs()
    batcher = StatementBatcher(runs.many, concurrency=2, max_batch=3)
    results = outcomes([batcher.submit(str(i)) for i in range(9)])
    assert runs.log == [["0"], ["1"]]  # two in flight
    runs.finish_all()
    assert runs.log[2:] == [["2", "3", "4"], ["5", "6", "7"]]
    runs.finish_all()
    assert runs.log[4:] == [["8"]]
    runs.finish_all()
    assert results == [f"{i}!" for i in range(9)]
