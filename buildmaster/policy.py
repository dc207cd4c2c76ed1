"""Pure rules: which builder may take which job, and (later) who is to blame for a failure.

No Twisted, no database: value objects in, decisions out.
"""

from __future__ import annotations

from buildmaster.model import Build, Builder, BuildQueue

__all__ = ["builder_may_take_jobs", "builder_can_run"]


def builder_may_take_jobs(builder: Builder) -> bool:
    """Only an ok, active builder out of manual mode, with a processor, is offered jobs."""
    return (
        builder.builderok and builder.active and not builder.manual and bool(builder.processor_ids)
    )


def builder_can_run(builder: Builder, job: BuildQueue | Build) -> bool:
    """Whether ``job`` may run on ``builder``: its processor, and virtualized exactly when the
    builder is (a PPA job never reaches a trusted builder; a trusted builder's time is kept for
    the primary archive)."""
    return job.processor_id in builder.processor_ids and job.virtualized == builder.virtualized
