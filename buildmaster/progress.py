"""Pure: whether a builder in a state that should end by itself has stopped moving.

Some builder states end by themselves soon: an abort ends WAITING (ABORTED) within seconds,
or BUILDERFAIL when its processes will not die (the real daemon gives up after 120 s), and
a build the master did not give the builder (leftovers, a lost build) is aborted at once.
The real daemon can stop moving in them for ever: after a crash, ``build()`` of a build
whose directory survived leaves it BUILDING with nothing running, and an ``abort()`` of
nothing then answers ABORTING and stays so until the daemon is restarted. Nobody is told.

The scanner keeps a :class:`Watch` per builder, renewed by :func:`observe` at every poll:
a builder seen in the same such state for ``timeout`` seconds is :class:`Stuck`, and the
shell turns that into a builder failure (a virtualized builder gets its VM reset instead).

No Twisted, no database: plain-assert tests cover it.
"""

from __future__ import annotations

import attrs

from buildmaster.enums import BuilderStatus

__all__ = ["Watch", "Stuck", "must_move", "observe"]


@attrs.frozen
class Watch:
    """A state that should end by itself, and since when the builder has been in it."""

    state: BuilderStatus
    build_id: str | None
    since: float


@attrs.frozen
class Stuck:
    """A builder that has not left such a state for too long."""

    state: BuilderStatus
    build_id: str | None
    seconds: float

    @property
    def what(self) -> str:
        """``stuck ABORTING PACKAGEBUILD-7 for 300 s``."""
        build = f" {self.build_id}" if self.build_id else ""
        return f"stuck {self.state.name}{build} for {self.seconds:.0f} s"

    def reason(self, virtualized: bool) -> str:
        """The failnote (or, for a virtualized builder, what its VM reset is for): what is
        wrong and what an operator does about it."""
        if self.state is BuilderStatus.ABORTING:
            why = (
                "an abort that does not end (nothing left to kill, or processes that will not die)"
            )
        else:
            why = "it does not stop a build it was told to abort"
        if virtualized:
            return f"{self.what}: {why}; resetting its VM"
        return f"{self.what}: {why}; restart the builder daemon"


def must_move(state: BuilderStatus, running_ours: bool, cancelling: bool) -> bool:
    """Whether ``state`` should end by itself soon.

    :param running_ours: the builder runs the build the database gives it (and the master
        does not want it off the builder). A build runs as long as it needs: not watched.
    :param cancelling: that build is being cancelled (the cancel has its own deadline,
        ``cancel_timeout``).
    """
    if state is BuilderStatus.ABORTING:
        return not (running_ours and cancelling)
    if state is BuilderStatus.BUILDING:
        return not running_ours
    return False


def observe(
    previous: Watch | None,
    state: BuilderStatus,
    build_id: str | None,
    *,
    running_ours: bool,
    cancelling: bool,
    now: float,
    timeout: float,
) -> tuple[Watch | None, Stuck | None]:
    """What a poll of the builder says about its progress.

    :returns: the watch to keep (``None`` when the builder is in a state that needs no
        watching), and :class:`Stuck` when it has been in the same state (and build id)
        for ``timeout`` seconds or more.
    """
    if not must_move(state, running_ours, cancelling):
        return None, None
    if previous is None or (previous.state, previous.build_id) != (state, build_id):
        return Watch(state, build_id, now), None
    if now - previous.since >= timeout:
        return previous, Stuck(state, build_id, now - previous.since)
    return previous, None
