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
    "building_poll_delay",
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
    #: the builder is to blame: the job's failure count is reset, so that bad luck with a
    #: broken builder is not held against it later
    forgive_job: bool = False


def judge_failure(
    builder_failures: int,
    job_failures: int | None,
    isolation: bool = False,
    policy: FailurePolicy = FailurePolicy(),
) -> Judgement:
    """Decide what to do after a failure, from the failure counts (this failure included).

    ``job_failures`` is ``None`` when the builder had no job.

    * An isolation failure (a builder doing what the database never gave it) is a security
      matter: the builder is disabled and the job failed at once.
    * Equal counts: nobody can be blamed. The job stays (is retried) until it has failed
      ``job_reset_threshold`` times, then goes back to the queue; the builder is left alone.
    * The builder failed more: it is to blame. The job is requeued (and forgiven: its count
      is reset), and the builder reset, or disabled once it has failed
      ``builder_disable_threshold`` times.
    * The job failed more: it keeps breaking builders. Once it has failed
      ``job_reset_threshold`` times it fails; before that it is tried elsewhere.

    The counts are the caller's: the master counts a job's failure once per stay on a
    builder (however many scans fail meanwhile), a builder's at every failure.
    """
    if isolation:
        return Judgement(
            BuilderAction.DISABLE,
            JobAction.FAIL,
            "isolation failure: both builder and job are failed",
        )
    disable = builder_failures >= policy.builder_disable_threshold
    builder_action = BuilderAction.DISABLE if disable else BuilderAction.NONE
    if job_failures is None:
        return Judgement(
            builder_action,
            JobAction.NONE,
            f"builder failed {builder_failures} times" + ("" if disable else "; will retry"),
        )
    if builder_failures == job_failures:
        # nobody can be blamed: the builder is not disabled for it (the job may be the problem)
        if job_failures >= policy.job_reset_threshold:
            return Judgement(
                BuilderAction.NONE,
                JobAction.REQUEUE,
                f"builder and job both failed {job_failures} times: requeueing the job",
            )
        return Judgement(
            BuilderAction.NONE,
            JobAction.NONE,
            f"builder and job both failed {job_failures} times; will retry",
        )
    if builder_failures > job_failures:
        return Judgement(
            BuilderAction.DISABLE if disable else BuilderAction.RESET,
            JobAction.REQUEUE,
            f"builder failed {builder_failures} times (job {job_failures}): "
            + ("disabling the builder" if disable else "requeueing the job"),
            forgive_job=True,
        )
    if job_failures >= policy.job_reset_threshold:
        return Judgement(
            builder_action,
            JobAction.FAIL,
            f"job failed {job_failures} times (builder {builder_failures}): the job is at fault",
            forgive_job=False,
        )
    return Judgement(
        builder_action,
        JobAction.REQUEUE,
        f"job failed {job_failures} times (builder {builder_failures}): trying it elsewhere",
        forgive_job=disable,
    )


def probe_delay(attempt: int, initial: float, maximum: float, factor: float = 2.0) -> float:
    """How long to wait before re-probing an automatically failed builder (``attempt`` from 0)."""
    return min(initial * factor ** min(attempt, 64), maximum)


def building_poll_delay(elapsed: float, interval: float, fraction: float, maximum: float) -> float:
    """How long to wait between two polls of a builder whose build has run ``elapsed``
    seconds: ``fraction`` of that, at least the scan interval, at most ``maximum`` (and never
    less than the interval, even when ``maximum`` is smaller). The end of a build is then
    noticed within about ``fraction`` of its length (and ``maximum``) while a long build is
    not asked for its status again and again."""
    return max(interval, min(elapsed * fraction, maximum))
