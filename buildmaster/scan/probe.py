"""Whether a builder is fit to work: the probe (``echo``, ``info``, ``status``), and the
re-probes of a builder the master failed, with a growing delay, until it answers correctly
and is back in service. A builder out of service gives back the job the database gives it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.logger import Logger

from buildmaster.buildargs import BUILDER_TYPE
from buildmaster.enums import BuilderStatus
from buildmaster.model import Builder, BuilderSnapshot
from buildmaster.protocol import PROTOCOL_VERSION, BuilderError, StatusReport
from buildmaster.scan.context import Scope
from buildmaster.scan.dispatch import next_job
from buildmaster.scan.judge import schedule_probe

__all__ = ["out_of_service", "probe", "reprobe"]

_log = Logger()


async def probe(s: Scope, arch_tag: str | None = None) -> str | None:
    """echo, info (protocol 1.0, the right architecture), status. Returns a failure
    reason, or ``None`` when the builder answers correctly."""
    client = s.client
    try:
        await client.echo("Test")
        info = await client.info()
        if info.protocol_version != PROTOCOL_VERSION:
            return f"protocol version {info.protocol_version!r}, expected {PROTOCOL_VERSION!r}"
        if arch_tag is not None and info.arch_tag != arch_tag:
            return f"architecture {info.arch_tag!r}, expected {arch_tag!r}"
        if BUILDER_TYPE not in info.builder_types:
            return f"cannot build {BUILDER_TYPE} (it offers {', '.join(info.builder_types) or 'nothing'})"
        s.memory.last_status = await client.status()
    except BuilderError as e:
        s.memory.last_status = None
        return str(e)
    return None


async def out_of_service(
    s: Scope, snap: BuilderSnapshot, arch_tag_for: Callable[[Builder], Awaitable[str | None]]
) -> None:
    """The builder is out of service: its job goes back to the queue, and a builder the
    master failed is probed again when its probe is due."""
    builder, memory, services = snap.builder, s.memory, s.services
    memory.last_status = None
    memory.watch = None
    if not builder.failed_by_master:
        # an operator's: it comes back when they say it is fit, leftovers gone
        memory.lost_here.clear()
    if snap.job is not None:
        reason = f"{builder.name} is out of service: {builder.failnotes or 'no reason given'}"
        await services.store.jobs.requeue(snap.job, builder, reason)
    if builder.failed_by_master and services.clock.seconds() >= memory.next_probe:
        await reprobe(s, snap, await arch_tag_for(builder))


async def reprobe(s: Scope, snap: BuilderSnapshot, arch_tag: str | None) -> None:
    """An automatically failed builder: is it healthy again? (with backoff)"""
    builder, memory = snap.builder, s.memory
    memory.probe_attempts += 1
    reason = await probe(s, arch_tag)
    if reason is None and memory.last_status is not None:
        state = memory.last_status.builder_status
        try:
            if state is BuilderStatus.WAITING:
                await s.client.clean()
                state = BuilderStatus.IDLE
            elif state is BuilderStatus.BUILDING:
                await s.client.abort()
                reason = "it was still building something: aborted it"
            elif state is BuilderStatus.ABORTING:
                reason = "it is still aborting"
        except BuilderError as e:
            reason = str(e)
    if reason is not None:
        schedule_probe(s)
        _log.info(
            "{builder} still failing: {reason} (next probe in {delay:.0f} s)",
            builder=builder.name,
            reason=reason,
            delay=memory.next_probe - s.services.clock.seconds(),
        )
        return
    await s.services.store.jobs.restore_builder(builder, "answers correctly again")
    _log.info("{builder} is back in service", builder=builder.name)
    memory.probe_attempts = 0
    memory.consecutive_failures = 0
    memory.builder = attrs.evolve(
        builder, builderok=True, failed_by_master=False, failnotes=None, failure_count=0
    )
    memory.last_status = StatusReport(BuilderStatus.IDLE)
    await next_job(s)
