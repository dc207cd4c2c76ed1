"""What is done to the builder itself: a VM reset, ``abort()``, ``clean()``, and the record of
whether it is clean (``clean_status``)."""

from __future__ import annotations

import attrs

from buildmaster.enums import BuilderCleanStatus, BuilderStatus
from buildmaster.progress import Watch
from buildmaster.protocol import BuilderProtocolError, StatusReport
from buildmaster.scan.context import Scope
from buildmaster.vmreset import reset_vm as run_reset_command
from buildmaster.vmreset import resume_argv

__all__ = ["abort", "clean", "ready", "reset_vm", "set_clean_status"]


async def reset_vm(s: Scope) -> None:
    """Reset the builder's VM with the configured command (nothing without one).

    :raises buildmaster.vmreset.VMResetFailed:
    :raises buildmaster.ownership.OwnershipLost: the master no longer holds the builder.
    """
    services, builder = s.services, s.builder
    command = services.config.vm_resume_command
    if not command:
        return
    s.check_owned()
    argv = resume_argv(command, builder.vm_host, builder.name)
    try:
        await run_reset_command(services.reactor, argv, services.config.vm_resume_timeout)
    finally:
        # connections kept alive to the machine before its reset lead nowhere (at best
        # to a reset, at worst to silence until a call's deadline)
        s.client.close_idle()
    # a new machine: nothing of what it lost is left on it
    s.memory.lost_here.clear()
    s.memory.watch = None


async def abort(s: Scope, status: StatusReport | None) -> None:
    """``abort()`` what the builder is doing (``status``); the abort should end by
    itself, and the stuck watch starts now."""
    await s.client.abort()
    build_id = status.build_id if status is not None else None
    watch = s.memory.watch
    if watch is None or (watch.state, watch.build_id) != (BuilderStatus.ABORTING, build_id):
        s.memory.watch = Watch(BuilderStatus.ABORTING, build_id, s.services.clock.seconds())


async def clean(s: Scope) -> None:
    """``clean()`` the builder, which must then be IDLE.

    :raises BuilderProtocolError: it is not.
    """
    state = await s.client.clean()
    if state is not BuilderStatus.IDLE:
        raise BuilderProtocolError(f"clean() left the builder {state.name}")
    s.memory.last_status = StatusReport(BuilderStatus.IDLE)


async def set_clean_status(s: Scope, status: BuilderCleanStatus) -> None:
    memory = s.memory
    if memory.builder.clean_status is not status:
        await s.services.store.jobs.set_clean_status(memory.builder, status)
        memory.builder = attrs.evolve(memory.builder, clean_status=status)


async def ready(s: Scope) -> None:
    """An IDLE trusted builder is clean (a virtualized one is clean once its VM is reset)."""
    if not s.builder.virtualized:
        await set_clean_status(s, BuilderCleanStatus.CLEAN)
