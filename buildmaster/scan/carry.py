"""Carrying out a decision of the scan: each :class:`~buildmaster.scan.decide.Step` and the
step module that does it, in one table (:data:`CARRY`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from buildmaster.logtails import LogtailBuffer
from buildmaster.model import BuilderSnapshot, BuildQueue
from buildmaster.protocol import BuilderProtocolError, StatusReport
from buildmaster.scan import cancel, collect, dispatch, judge
from buildmaster.scan.context import Scope
from buildmaster.scan.decide import Decision, Step
from buildmaster.scan.machine import clean

__all__ = ["CARRY", "Turn", "carry_out"]


class Turn:
    """One decision being carried out: what the steps read."""

    __slots__ = ("s", "snap", "status", "decision", "logtails")

    def __init__(
        self,
        s: Scope,
        snap: BuilderSnapshot,
        status: StatusReport,
        decision: Decision,
        logtails: LogtailBuffer,
    ) -> None:
        self.s, self.snap, self.status = s, snap, status
        self.decision, self.logtails = decision, logtails

    @property
    def job(self) -> BuildQueue:
        """The database's job for the builder (the steps that use it have one)."""
        assert self.snap.job is not None
        return self.snap.job


async def carry_out(
    s: Scope,
    decision: Decision,
    snap: BuilderSnapshot,
    status: StatusReport,
    logtails: LogtailBuffer,
) -> None:
    """Carry out ``decision``'s steps, in order.

    :raises BuilderError: a step's call to the builder failed (the worker judges it).
    """
    if not decision.steps:
        return
    turn = Turn(s, snap, status, decision, logtails)
    for step in decision.steps:
        await CARRY[step](turn)


async def _stuck(t: Turn) -> None:
    assert t.decision.stuck is not None
    await judge.stuck(t.s, t.snap, t.decision.stuck)


async def _evict(t: Turn) -> None:
    job = t.job
    eviction = t.s.memory.evicting[job.id]
    if await judge.evict(t.s, t.snap.builder, job, t.status, eviction):
        await dispatch.next_job(t.s)


async def _record_dispatch(t: Turn) -> None:
    await dispatch.record_discovered(t.s, t.snap)


async def _next_job(t: Turn) -> None:
    await dispatch.next_job(t.s)


async def _cancel_idle(t: Turn) -> None:
    await cancel.cancel_idle(t.s, t.snap.builder, t.job)


async def _release_claim(t: Turn) -> None:
    await dispatch.release_unsent(t.s, t.snap.builder, t.job)


async def _lost(t: Turn) -> None:
    assert t.decision.reason is not None
    await judge.lost(t.s, t.snap.builder, t.job, t.status, t.decision.reason)


async def _keep_logtail(t: Turn) -> None:
    t.logtails.add(t.job.id, t.snap.builder.id, t.status.logtail)


async def _abort_cancelled(t: Turn) -> None:
    await cancel.cancel_running(t.s, t.snap.builder, t.job)


async def _check_cancel(t: Turn) -> None:
    await cancel.check_cancel_timeout(t.s, t.snap.builder, t.job)


async def _isolation_failure(t: Turn) -> None:
    await judge.isolation_failure(t.s, t.snap.builder, t.status)


async def _abort_leftovers(t: Turn) -> None:
    await cancel.abort_leftovers(t.s, t.snap.builder, t.status)


async def _judge_leftovers(t: Turn) -> None:
    # leftovers it was told to abort, and could not kill: it says it failed
    error = BuilderProtocolError(
        f"the builder reported BUILDERFAIL for {t.status.build_id!r} (a build it could not stop)"
    )
    await judge.failed(t.s, t.snap.builder, None, error)


async def _collect(t: Turn) -> None:
    await collect.collect(t.s, t.snap, t.status)


async def _clean(t: Turn) -> None:
    await clean(t.s)


#: who carries out each step
CARRY: dict[Step, Callable[[Turn], Awaitable[None]]] = {
    Step.STUCK: _stuck,
    Step.EVICT: _evict,
    Step.RECORD_DISPATCH: _record_dispatch,
    Step.NEXT_JOB: _next_job,
    Step.CANCEL_IDLE: _cancel_idle,
    Step.RELEASE_CLAIM: _release_claim,
    Step.LOST: _lost,
    Step.KEEP_LOGTAIL: _keep_logtail,
    Step.ABORT_CANCELLED: _abort_cancelled,
    Step.CHECK_CANCEL: _check_cancel,
    Step.ISOLATION_FAILURE: _isolation_failure,
    Step.ABORT_LEFTOVERS: _abort_leftovers,
    Step.JUDGE_LEFTOVERS: _judge_leftovers,
    Step.COLLECT: _collect,
    Step.CLEAN: _clean,
}
