"""Pure rules: which builder may take which job, and who is to blame for a failure.

No Twisted, no database: value objects in, decisions out. Plain-assert tests cover them.
"""

from __future__ import annotations

import enum

import attrs

from buildmaster.model import Build, Builder, BuildQueue

__all__ = [
    "builder_may_take_jobs",
    "builder_can_run",
    "FailurePolicy",
    "BuilderAction",
    "JobAction",
    "Judgement",
    "judge_failure",
    "probe_delay",
]


def builder_may_take_jobs(builder: Builder) -> bool:
    """Only an ok, active builder out of manual mode, with a processor, is offered jobs."""
    return (
        builder.builderok and builder.active and not builder.manual and bool(builder.processor_ids)
    )


def builder_can_run(builder: Builder, job: BuildQueue | Build) -> bool:
    """Whether ``job`` may run on ``builder``: its processor, and virtualized exactly when the
    builder is (a PPA job never reaches a trusted builder; a trusted builder's time is kept
    for the primary archive)."""
    return job.processor_id in builder.processor_ids and job.virtualized == builder.virtualized


@attrs.frozen
class FailurePolicy:
    """The numbers behind failure judgement (Launchpad's defaults)."""

    #: consecutive failed scans of a builder that are shrugged off before they count
    tolerated_scan_failures: int = 5
    #: failures after which a job nobody can be blamed for is sent back to the queue
    job_reset_threshold: int = 3
    #: failures after which a builder is taken out of service
    builder_disable_threshold: int = 5


class BuilderAction(enum.Enum):
    NONE = "none"
    #: cheap recovery: clean it up (virtualized: reset its VM) before it builds again
    RESET = "reset"
    #: take it out of service (builderok = False) with the reason as failnotes
    DISABLE = "disable"


class JobAction(enum.Enum):
    #: leave the job where it is (look again at the next scan)
    NONE = "none"
    #: back to the queue, to be tried again, probably elsewhere
    REQUEUE = "requeue"
    #: the job is the problem: it fails
    FAIL = "fail"


@attrs.frozen
class Judgement:
    builder: BuilderAction
    job: JobAction
    reason: str


def judge_failure(
    builder_failures: int,
    job_failures: int | None,
    isolation: bool = False,
    policy: FailurePolicy = FailurePolicy(),
) -> Judgement:
    """Decide what to do after a failure, from the failure counts (this failure included).

    ``job_failures`` is ``None`` when the builder had no job. The one that failed more often
    is blamed; when the counts are equal nobody can be blamed, and the job is retried
    elsewhere once it has failed ``job_reset_threshold`` times. An isolation failure (a
    builder doing something the database never gave it) is a security matter: the builder
    is disabled and the job failed at once.
    """
    if isolation:
        return Judgement(
            BuilderAction.DISABLE,
            JobAction.FAIL,
            "isolation failure: both builder and job are failed",
        )
    disable = builder_failures >= policy.builder_disable_threshold
    if job_failures is None:
        if disable:
            return Judgement(
                BuilderAction.DISABLE, JobAction.NONE, f"builder failed {builder_failures} times"
            )
        return Judgement(
            BuilderAction.NONE,
            JobAction.NONE,
            f"builder failed {builder_failures} times; will retry",
        )
    if builder_failures == job_failures:
        if job_failures >= policy.job_reset_threshold:
            return Judgement(
                BuilderAction.DISABLE if disable else BuilderAction.NONE,
                JobAction.REQUEUE,
                f"builder and job both failed {job_failures} times: requeueing the job",
            )
        return Judgement(
            BuilderAction.NONE,
            JobAction.NONE,
            f"builder and job both failed {job_failures} times; will retry",
        )
    if builder_failures > job_failures:
        if disable:
            return Judgement(
                BuilderAction.DISABLE,
                JobAction.REQUEUE,
                f"builder failed {builder_failures} times (job {job_failures}): disabling the builder",
            )
        return Judgement(
            BuilderAction.RESET,
            JobAction.REQUEUE,
            f"builder failed {builder_failures} times (job {job_failures}): requeueing the job",
        )
    return Judgement(
        BuilderAction.NONE,
        JobAction.FAIL,
        f"job failed {job_failures} times (builder {builder_failures}): the job is at fault",
    )


def probe_delay(attempt: int, initial: float, maximum: float, factor: float = 2.0) -> float:
    """How long to wait before re-probing an automatically failed builder (``attempt`` from 0)."""
    return min(initial * factor ** min(attempt, 64), maximum)
