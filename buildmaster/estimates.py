"""How long until a waiting build starts, and until a kind's queue drains. Pure.

A queued build's estimated duration is how long the last successful build of the same
source on the same processor took (else a default: the database sets it when the build is
queued). The work ahead of a build is the estimated durations of the builds before it in
dispatch order plus what is left of the builds running, shared by the builders that can
take it. It is a rough guide, as Launchpad's is: builders differ, and estimates are
durations of other versions.
"""

from __future__ import annotations

import attrs

__all__ = ["KindLoad", "drain_seconds", "start_in_seconds"]


@attrs.frozen
class KindLoad:
    """The queue of one kind of build (processor x virtualization), as estimates."""

    #: waiting builds, and the sum of their estimated durations
    waiting: int
    waiting_seconds: float
    #: the estimated duration of the build that starts last (read as the lowest-scored
    #: one's: the drain time does not need the whole dispatch order's forecast)
    last_seconds: float
    #: what is left of the builds running now (their estimate less the time they ran, >= 0)
    running_remaining_seconds: float
    #: builders that take this kind of build now (ok, active, not in manual mode)
    builders: int


def start_in_seconds(ahead_seconds: float, running_remaining: float, builders: int) -> float | None:
    """Seconds until a build starts with ``ahead_seconds`` of work before it; ``None`` when
    no builder can take it (it does not start at all until one can)."""
    if builders <= 0:
        return None
    return max(0.0, (ahead_seconds + running_remaining) / builders)


def drain_seconds(load: KindLoad) -> float | None:
    """Seconds until the last waiting build starts (0 with nothing waiting; ``None`` when
    builds wait and no builder can take them)."""
    if load.waiting == 0:
        return 0.0
    return start_in_seconds(
        load.waiting_seconds - load.last_seconds, load.running_remaining_seconds, load.builders
    )
