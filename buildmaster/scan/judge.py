"""Applying the failure policy's judgements (:mod:`buildmaster.policy`): a failure is counted
against the builder and its job, judged, and the judgement carried out: the job requeued
(at once, or once the builder is known not to run it: an eviction) or failed, the builder
disabled (and probed again later) or marked dirty. Lost builds, stuck builders and
isolation failures are judged here too."""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from buildmaster.enums import BuilderCleanStatus, BuilderStatus
from buildmaster.model import Builder, BuilderSnapshot, BuildQueue
from buildmaster.policy import BuilderAction, JobAction, judge_failure, probe_delay
from buildmaster.progress import Stuck
from buildmaster.protocol import BuilderError, StatusReport
from buildmaster.scan.context import Eviction, Scope
from buildmaster.scan.machine import abort, clean, reset_vm, set_clean_status

__all__ = [
    "apply",
    "evict",
    "failed",
    "failure_message",
    "isolation_failure",
    "lost",
    "schedule_probe",
    "scan_failed",
    "stuck",
]

_log = Logger()


def failure_message(builder: Builder, reason: str) -> str:
    """The seed's WARNING: ``frog (http://localhost:9221/) marked as failed due to: ...``."""
    return f"{builder.name} ({builder.url}) marked as failed due to: {reason}"


async def scan_failed(s: Scope, snap: BuilderSnapshot, error: BuilderError) -> None:
    """The builder could not be polled. A few of these in a row are shrugged off."""
    if s.cut():
        return
    s.memory.consecutive_failures += 1
    n = s.memory.consecutive_failures
    tolerated = s.services.config.failure_policy.tolerated_scan_failures
    if n <= tolerated:
        _log.info(
            "{builder} scan failed ({n}/{tolerated} tolerated): {error}",
            builder=snap.builder.name,
            n=n,
            tolerated=tolerated,
            error=error,
        )
        return
    await failed(s, snap.builder, snap.job, error)


async def failed(
    s: Scope,
    builder: Builder,
    job: BuildQueue | None,
    error: BuilderError,
    must_leave: bool = False,
    evict: bool = False,
) -> None:
    """Count the failure against builder and job, judge, and act on the judgement.

    ``must_leave``: the job cannot stay on the builder (it never started, or the builder
    gave up on it), so "leave it where it is" means "back to the queue".
    ``evict``: the builder may still run the job: it goes back to the queue only once
    the builder is known not to (see :func:`evict`).
    """
    services, memory = s.services, s.memory
    services.metrics.builder_failed(error)
    # a job is charged once per stay on a builder, however many scans fail meanwhile
    charge = job is not None and job.id != memory.charged
    builder_count, job_count = await services.store.jobs.count_failure(
        builder, job.build_id if job else None, count_build=charge
    )
    if job is not None:
        memory.charged = job.id
    judgement = judge_failure(builder_count, job_count, policy=services.config.failure_policy)
    job_action = judgement.job
    if must_leave and job_action is JobAction.NONE:
        job_action = JobAction.REQUEUE
    reason = str(error)
    await services.store.events.record(
        "failure",
        f"{reason} ({judgement.reason})",
        build=job.build_id if job else None,
        builder=builder.id,
    )
    await apply(
        s, builder, job, judgement.builder, job_action, reason, judgement.forgive_job, evict
    )


async def apply(
    s: Scope,
    builder: Builder,
    job: BuildQueue | None,
    builder_action: BuilderAction,
    job_action: JobAction,
    reason: str,
    forgive_job: bool = False,
    evict: bool = False,
) -> None:
    """Carry out a judgement: what becomes of the job, then of the builder."""
    services, memory = s.services, s.memory
    jobs = services.store.jobs
    if job is not None:
        if job_action is JobAction.REQUEUE:
            if evict:
                memory.evicting = {job.id: Eviction(reason, forgive=forgive_job)}
            else:
                memory.evicting.pop(job.id, None)
                await jobs.requeue(job, builder, reason, forgive=forgive_job)
            # "try it elsewhere": not here again for a while
            memory.avoid[job.id] = services.clock.seconds() + services.config.retry_elsewhere_for
        elif job_action is JobAction.FAIL:
            await jobs.fail_job(job, builder, reason)
    if builder_action is BuilderAction.DISABLE:
        _log.warn("{message}", message=failure_message(builder, reason))
        await jobs.fail_builder(builder, reason)
        memory.builder = attrs.evolve(
            builder, builderok=False, failed_by_master=True, failnotes=reason
        )
        memory.last_status = None
        memory.probe_attempts = 0
        schedule_probe(s)
    elif builder_action is BuilderAction.RESET:
        await set_clean_status(s, BuilderCleanStatus.DIRTY)


def schedule_probe(s: Scope) -> None:
    """The next probe of a failed builder, after a delay that grows with each attempt."""
    config, memory = s.services.config, s.memory
    delay = probe_delay(memory.probe_attempts, config.probe_initial_delay, config.probe_max_delay)
    memory.next_probe = s.services.clock.seconds() + delay


async def lost(
    s: Scope, builder: Builder, job: BuildQueue, status: StatusReport, reason: str
) -> None:
    """The builder is not doing the build the database gives it: the build is lost,
    and the builder is to blame (counted, judged; disabled when it keeps losing them).
    The job goes back to the queue at once if the builder is IDLE or WAITING, once it is
    known not to run it otherwise (it may be building it under another name), and it is
    not given back to this builder until the builder is known clean."""
    _log.warn("{builder} lost job {job}: {reason}", builder=builder.name, job=job.id, reason=reason)
    services = s.services
    jobs = services.store.jobs
    builder_count, _ = await jobs.count_failure(builder, None)
    judgement = judge_failure(builder_count, None, policy=services.config.failure_policy)
    await services.store.events.record(
        "failure", f"{reason} ({judgement.reason})", build=job.build_id, builder=builder.id
    )
    s.memory.remember_lost(job.id)
    await set_clean_status(s, BuilderCleanStatus.DIRTY)
    if status.builder_status in (BuilderStatus.BUILDING, BuilderStatus.ABORTING):
        eviction = Eviction(reason, kind="lost")
        s.memory.evicting = {job.id: eviction}
        await evict(s, builder, job, status, eviction)
    else:
        await jobs.requeue(job, builder, reason, kind="lost")
    if judgement.builder is BuilderAction.DISABLE:
        await apply(
            s, builder, None, BuilderAction.DISABLE, JobAction.NONE, f"lost builds: {reason}"
        )


async def evict(
    s: Scope,
    builder: Builder,
    job: BuildQueue,
    status: StatusReport | None,
    eviction: Eviction,
) -> bool:
    """Move ``job`` off the builder, which may still run it, once it is known not to: a
    virtualized builder has its VM reset; a trusted one is aborted, cleaned once it is
    WAITING, and then the job goes back to the queue. An abort that does not end is
    the stuck watch's (:mod:`buildmaster.progress`).

    Returns whether the job is off the builder (which is then free for its next job).

    :param status: what the builder said last (``None``: nothing known; wait).
    """
    state = status.builder_status if status is not None else None
    if builder.virtualized and s.services.config.vm_resume_command:
        await reset_vm(s)
        s.memory.last_status = StatusReport(BuilderStatus.IDLE)
        await release(s, builder, job, eviction)
        await set_clean_status(s, BuilderCleanStatus.CLEAN)
    elif state is BuilderStatus.BUILDING:
        await abort(s, status)
        return False
    elif state is BuilderStatus.WAITING:
        await clean(s)
        await release(s, builder, job, eviction)
    elif state is BuilderStatus.IDLE:
        await release(s, builder, job, eviction)
    else:
        return False  # ABORTING, or not known: wait
    return True


async def release(s: Scope, builder: Builder, job: BuildQueue, eviction: Eviction) -> None:
    """The builder is known not to run ``job`` any more: back to the queue with it."""
    s.memory.evicting.pop(job.id, None)
    _log.info(
        "{builder} no longer runs job {job}: back to the queue", builder=builder.name, job=job.id
    )
    await s.services.store.jobs.requeue(
        job, builder, eviction.reason, kind=eviction.kind, forgive=eviction.forgive
    )


async def stuck(s: Scope, snap: BuilderSnapshot, verdict: Stuck) -> None:
    """A builder stuck in a state that should end by itself is failed with the reason (a
    virtualized one gets its VM reset instead)."""
    s.memory.watch = None
    builder, job = snap.builder, snap.job
    services = s.services
    if builder.virtualized and services.config.vm_resume_command:
        reason = verdict.reason(virtualized=True)
        _log.warn(
            "{builder} ({url}) is {reason}", builder=builder.name, url=builder.url, reason=reason
        )
        await services.store.events.record(
            "reset", reason, build=job.build_id if job else None, builder=builder.id
        )
        await reset_vm(s)
        s.memory.last_status = StatusReport(BuilderStatus.IDLE)
        if job is not None:
            await release(s, builder, job, s.memory.evicting.get(job.id, Eviction(reason)))
        await set_clean_status(s, BuilderCleanStatus.CLEAN)
        return
    reason = verdict.reason(virtualized=False)
    await apply(s, builder, None, BuilderAction.DISABLE, JobAction.NONE, reason)
    if job is not None:
        s.memory.evicting.pop(job.id, None)
        await services.store.jobs.requeue(job, builder, f"{builder.name} failed: {reason}")


async def isolation_failure(s: Scope, builder: Builder, status: StatusReport) -> None:
    """The builder works while the database says it is clean and has no job."""
    reason = (
        f"isolation failure: the builder reports {status.builder_status.name} {status.build_id!r}"
        " while the database says it is clean and has no job"
    )
    policy = s.services.config.failure_policy
    judgement = judge_failure(0, None, isolation=True, policy=policy)
    await apply(s, builder, None, judgement.builder, JobAction.NONE, reason)
