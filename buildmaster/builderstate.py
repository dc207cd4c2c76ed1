"""What a builder is doing, in one word, from its row and its job. Pure."""

from __future__ import annotations

import enum

from buildmaster.enums import BuilderCleanStatus, BuildQueueStatus
from buildmaster.model import Builder, BuildQueue

__all__ = ["BuilderState", "builder_state"]


class BuilderState(enum.Enum):
    #: building a job (or aborting a cancelled one)
    BUILDING = "building"
    #: ok and clean, waiting for a job
    IDLE = "idle"
    #: ok, no job, not known to be clean yet (cleaning, or its VM is being reset)
    CLEANING = "cleaning"
    #: ok, but in manual mode: the master gives it no new job
    MANUAL = "manual"
    #: taken out of service by an operator (stays so until enabled again)
    DISABLED = "disabled"
    #: taken out of service by the master after failures (re-probed, comes back by itself)
    FAILED = "failed"
    #: deleted (kept for its history), never scanned
    INACTIVE = "inactive"


def builder_state(builder: Builder, job: BuildQueue | None) -> BuilderState:
    """The state an operator sees: out of service and inactive first, then a job, then
    manual mode, then whether it is clean."""
    if not builder.active:
        return BuilderState.INACTIVE
    if not builder.builderok:
        return BuilderState.FAILED if builder.failed_by_master else BuilderState.DISABLED
    if job is not None and job.status in (BuildQueueStatus.RUNNING, BuildQueueStatus.CANCELLING):
        return BuilderState.BUILDING
    if builder.manual:
        return BuilderState.MANUAL
    if builder.clean_status is not BuilderCleanStatus.CLEAN:
        return BuilderState.CLEANING
    return BuilderState.IDLE
