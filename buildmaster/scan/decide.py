"""Pure: what a scan does, given what the builder answered and what the database says.

:func:`decide` takes a :class:`Seen` (the builder's answer to ``status()``, the job the
database gives the builder, whether the builder is recorded clean, and the worker's own
memory: whether a job must leave the builder, whether the builder is stuck) and returns a
:class:`Decision`: the :class:`Step` values the worker carries out, in order. The rules are
one table (:data:`TABLE`), read top to bottom, first match wins.

No Twisted, no database: plain-assert tests cover every row.
"""

from __future__ import annotations

import enum

import attrs

from buildmaster.enums import (
    BuilderCleanStatus,
    BuilderResult,
    BuilderStatus,
    BuildQueueStatus,
    BuildStatus,
)
from buildmaster.progress import Stuck

__all__ = ["Decision", "Detail", "Job", "Seen", "Step", "TABLE", "decide"]


class Step(enum.Enum):
    """One thing a scan does (see :mod:`buildmaster.scan.worker` for who does it)."""

    #: the builder is stuck in a state that should end by itself: fail it, or reset its VM
    STUCK = "stuck"
    #: a job must leave the builder once it is known not to run it: see whether it can now
    EVICT = "evict"
    #: the builder runs our build, which the database does not show dispatched: record it
    RECORD_DISPATCH = "record-dispatch"
    #: claim the builder's next job and dispatch it (or record that it is clean)
    NEXT_JOB = "next-job"
    #: a cancelled build on an idle builder: it ends CANCELLED
    CANCEL_IDLE = "cancel-idle"
    #: claimed, but ``build()`` never reached the builder: release the claim
    RELEASE_CLAIM = "release-claim"
    #: the builder is not doing the database's build: the build is lost, the builder blamed
    LOST = "lost"
    #: keep the running build's log tail
    KEEP_LOGTAIL = "keep-logtail"
    #: ``abort()`` a build being cancelled
    ABORT_CANCELLED = "abort-cancelled"
    #: a cancel's abort under way: fail the builder if it takes too long
    CHECK_CANCEL = "check-cancel"
    #: the builder works while the database says it is clean with no job
    ISOLATION_FAILURE = "isolation-failure"
    #: leftovers of a build the database gave up on: ``abort()`` them
    ABORT_LEFTOVERS = "abort-leftovers"
    #: the builder says BUILDERFAIL for leftovers it could not stop: judge it
    JUDGE_LEFTOVERS = "judge-leftovers"
    #: collect the finished build, clean the builder, give it its next job
    COLLECT = "collect"
    #: ``clean()`` the builder
    CLEAN = "clean"


class Job(enum.Enum):
    """The database's job for the builder, against what the builder says it does."""

    NONE = "no job"
    #: the builder names the job's build
    OURS = "ours"
    #: the builder names another build, or none
    OTHER = "other"


class Detail(enum.Enum):
    """What else matters: of the job (when there is one) or of the builder (when not)."""

    ANY = "any"
    #: the job is being cancelled
    CANCELLING = "cancelling"
    #: the job is claimed, its build not yet recorded as dispatched
    CLAIMED = "claimed"
    #: the builder, with no job, is recorded clean
    CLEAN = "clean"
    #: the builder, with no job, reports BUILDERFAIL
    BUILDERFAIL = "builderfail"


@attrs.frozen
class Seen:
    """What a scan saw of a builder."""

    #: what the builder answered
    state: BuilderStatus
    build_id: str | None = None
    build_status: BuilderResult | None = None
    #: the database's job for the builder (``None``: no job), its build's cookie and state
    job_status: BuildQueueStatus | None = None
    cookie: str | None = None
    build_state: BuildStatus | None = None
    #: the builder's record
    clean_status: BuilderCleanStatus = BuilderCleanStatus.DIRTY
    #: the worker's memory: the job must leave the builder once it is known not to run it
    evicting: bool = False
    #: the stuck watch's verdict (:func:`buildmaster.progress.observe`)
    stuck: Stuck | None = None

    @property
    def job(self) -> Job:
        if self.job_status is None:
            return Job.NONE
        return Job.OURS if self.build_id == self.cookie else Job.OTHER

    @property
    def detail(self) -> Detail:
        if self.job_status is None:
            if self.clean_status is BuilderCleanStatus.CLEAN:
                return Detail.CLEAN
            if self.build_status is BuilderResult.BUILDERFAIL:
                return Detail.BUILDERFAIL
            return Detail.ANY
        if self.job_status is BuildQueueStatus.CANCELLING:
            return Detail.CANCELLING
        if self.build_state is BuildStatus.NEEDSBUILD:
            return Detail.CLAIMED
        return Detail.ANY

    @property
    def running_ours(self) -> bool:
        """The builder runs the database's build, which is to stay there."""
        return self.job is Job.OURS and not self.evicting


@attrs.frozen
class Decision:
    steps: tuple[Step, ...]
    #: why (a lost build's reason)
    reason: str | None = None
    #: the stuck watch's verdict, for :attr:`Step.STUCK`
    stuck: Stuck | None = None


_IDLE, _BUILDING = BuilderStatus.IDLE, BuilderStatus.BUILDING
_ABORTING, _WAITING = BuilderStatus.ABORTING, BuilderStatus.WAITING
#: any job (ours or another): for an IDLE builder the difference does not matter
_A_JOB = (Job.OURS, Job.OTHER)
S = Step

#: (what the builder says, the job, the detail) -> the steps; first match wins, ANY
#: matches every detail.
TABLE: tuple[tuple[BuilderStatus, tuple[Job, ...], Detail, tuple[Step, ...]], ...] = (
    (_IDLE, (Job.NONE,), Detail.ANY, (S.NEXT_JOB,)),
    (_IDLE, _A_JOB, Detail.CANCELLING, (S.CANCEL_IDLE, S.NEXT_JOB)),
    (_IDLE, _A_JOB, Detail.CLAIMED, (S.RELEASE_CLAIM, S.NEXT_JOB)),
    (_IDLE, _A_JOB, Detail.ANY, (S.LOST, S.NEXT_JOB)),
    (_BUILDING, (Job.OURS,), Detail.CANCELLING, (S.ABORT_CANCELLED,)),
    (_BUILDING, (Job.OURS,), Detail.ANY, (S.KEEP_LOGTAIL,)),
    (_BUILDING, (Job.OTHER,), Detail.ANY, (S.LOST,)),
    (_BUILDING, (Job.NONE,), Detail.CLEAN, (S.ISOLATION_FAILURE,)),
    (_BUILDING, (Job.NONE,), Detail.ANY, (S.ABORT_LEFTOVERS,)),
    (_ABORTING, (Job.OURS,), Detail.CANCELLING, (S.CHECK_CANCEL,)),
    (_ABORTING, (Job.OURS,), Detail.ANY, ()),
    (_ABORTING, (Job.OTHER,), Detail.ANY, (S.LOST,)),
    (_ABORTING, (Job.NONE,), Detail.CLEAN, (S.ISOLATION_FAILURE,)),
    (_ABORTING, (Job.NONE,), Detail.ANY, ()),
    (_WAITING, (Job.OURS,), Detail.ANY, (S.COLLECT,)),
    (_WAITING, (Job.OTHER,), Detail.ANY, (S.LOST, S.CLEAN, S.NEXT_JOB)),
    (_WAITING, (Job.NONE,), Detail.CLEAN, (S.ISOLATION_FAILURE,)),
    (_WAITING, (Job.NONE,), Detail.BUILDERFAIL, (S.JUDGE_LEFTOVERS, S.CLEAN, S.NEXT_JOB)),
    (_WAITING, (Job.NONE,), Detail.ANY, (S.CLEAN, S.NEXT_JOB)),
)

_LOST_REASONS = {
    _IDLE: "the builder is idle: it lost the build",
    _BUILDING: "the builder is building {build_id!r}, not {cookie}",
    _ABORTING: "the builder is aborting {build_id!r}, not {cookie}",
    _WAITING: "the builder finished {build_id!r}, not {cookie}",
}


def decide(seen: Seen) -> Decision:
    """The steps of a scan that saw ``seen`` (see the module docstring)."""
    if seen.stuck is not None:
        return Decision((Step.STUCK,), stuck=seen.stuck)
    if seen.evicting:
        return Decision((Step.EVICT,))
    job, detail = seen.job, seen.detail
    steps = next(
        row[3]
        for row in TABLE
        if row[0] is seen.state and job in row[1] and row[2] in (Detail.ANY, detail)
    )  # (every state has a row that matches anything)
    if job is Job.OURS and seen.state is not _IDLE and seen.build_state is BuildStatus.NEEDSBUILD:
        steps = (Step.RECORD_DISPATCH,) + steps
    reason = None
    if Step.LOST in steps:
        reason = _LOST_REASONS[seen.state].format(build_id=seen.build_id, cookie=seen.cookie)
    return Decision(steps, reason)
