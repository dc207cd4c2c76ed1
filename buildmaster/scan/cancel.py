"""Stopping builds on a builder: a cancelled build is aborted (and the builder failed when the
abort takes longer than ``cancel_timeout``), a cancelled build on an idle builder ends at
once, and leftovers of a build the database gave up on are aborted."""

from __future__ import annotations

from twisted.logger import Logger

from buildmaster.enums import BuildStatus
from buildmaster.model import Builder, BuildQueue
from buildmaster.policy import BuilderAction, JobAction
from buildmaster.protocol import StatusReport
from buildmaster.scan.context import Scope
from buildmaster.scan.judge import apply
from buildmaster.scan.machine import abort

__all__ = ["abort_leftovers", "cancel_idle", "cancel_running", "check_cancel_timeout"]

_log = Logger()


async def cancel_running(s: Scope, builder: Builder, job: BuildQueue) -> None:
    """The builder runs a build being cancelled: ``abort()`` it, once."""
    abort_sent = s.memory.abort_sent
    if job.id not in abort_sent:
        _log.info("Cancelling job {job} on {builder}", job=job.id, builder=builder.name)
        abort_sent[job.id] = s.services.clock.seconds()
        await s.client.abort()
    else:
        await check_cancel_timeout(s, builder, job)


async def check_cancel_timeout(s: Scope, builder: Builder, job: BuildQueue) -> None:
    """An abort that takes longer than ``cancel_timeout``: the build ends CANCELLED, and
    the builder is failed."""
    clock = s.services.clock
    sent = s.memory.abort_sent.setdefault(job.id, clock.seconds())
    timeout = s.services.config.cancel_timeout
    if clock.seconds() - sent < timeout:
        return
    reason = f"the build did not abort within {timeout:g} seconds"
    s.memory.abort_sent.pop(job.id, None)
    await s.services.store.jobs.fail_job(job, builder, reason, BuildStatus.CANCELLED)
    await apply(s, builder, None, BuilderAction.DISABLE, JobAction.NONE, reason)


async def cancel_idle(s: Scope, builder: Builder, job: BuildQueue) -> None:
    """A build being cancelled whose builder is idle: it ends CANCELLED now."""
    await s.services.store.jobs.fail_job(
        job, builder, "cancelled (the builder was idle)", BuildStatus.CANCELLED
    )


async def abort_leftovers(s: Scope, builder: Builder, status: StatusReport) -> None:
    """Leftovers of a build the database gave up on: stop them (then they are cleaned)."""
    _log.info(
        "Aborting leftover build {cookie} on {builder}",
        cookie=status.build_id,
        builder=builder.name,
    )
    await abort(s, status)
