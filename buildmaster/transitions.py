"""Which build state may follow which: a pure table, consulted before every change of state."""

from __future__ import annotations

from buildmaster.enums import BuildStatus

__all__ = [
    "IllegalTransition",
    "ALLOWED",
    "can_transition",
    "check_transition",
    "FINAL",
    "RETRYABLE",
]

S = BuildStatus

#: States a build never leaves.
FINAL = frozenset({S.FULLYBUILT, S.SUPERSEDED})

#: Ended states from which an operator may retry a build (back to NEEDSBUILD).
RETRYABLE = frozenset(
    {S.FAILEDTOBUILD, S.MANUALDEPWAIT, S.CHROOTWAIT, S.FAILEDTOUPLOAD, S.CANCELLED}
)

#: Ended states that a collected build can land in.
_RESULTS = frozenset(
    {S.FULLYBUILT, S.FAILEDTOBUILD, S.MANUALDEPWAIT, S.CHROOTWAIT, S.FAILEDTOUPLOAD, S.CANCELLED}
)

ALLOWED: dict[BuildStatus, frozenset[BuildStatus]] = {
    # a queued or running build may end up anywhere else
    S.NEEDSBUILD: frozenset(S) - {S.NEEDSBUILD},
    S.BUILDING: frozenset(S) - {S.BUILDING},
    # collecting the results of a finished build
    S.GATHERING: _RESULTS | {S.NEEDSBUILD, S.UPLOADING},
    S.UPLOADING: frozenset({S.FULLYBUILT, S.FAILEDTOUPLOAD}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    # failed or cancelled builds may be retried, or superseded by a newer source
    S.FAILEDTOBUILD: frozenset({S.NEEDSBUILD, S.SUPERSEDED}),
    S.MANUALDEPWAIT: frozenset({S.NEEDSBUILD, S.SUPERSEDED}),
    S.CHROOTWAIT: frozenset({S.NEEDSBUILD, S.SUPERSEDED}),
    S.FAILEDTOUPLOAD: frozenset({S.NEEDSBUILD, S.SUPERSEDED}),
    S.CANCELLED: frozenset({S.NEEDSBUILD, S.SUPERSEDED}),
    S.FULLYBUILT: frozenset(),
    S.SUPERSEDED: frozenset(),
}


class IllegalTransition(ValueError):
    """A change of build state that the rules forbid."""

    def __init__(self, build_id: int | None, current: BuildStatus, target: BuildStatus) -> None:
        allowed = ", ".join(sorted(s.name for s in ALLOWED[current])) or "nothing: it is final"
        what = f"build {build_id}" if build_id is not None else "a build"
        super().__init__(
            f"{what} cannot go from {current.name} to {target.name} (allowed from {current.name}: {allowed})"
        )
        self.build_id = build_id
        self.current = current
        self.target = target


def can_transition(current: BuildStatus, target: BuildStatus) -> bool:
    """Whether a build in state ``current`` may move to ``target``."""
    return target in ALLOWED[current]


def check_transition(
    current: BuildStatus, target: BuildStatus, build_id: int | None = None
) -> None:
    """Raise :class:`IllegalTransition` unless ``current`` may move to ``target``."""
    if not can_transition(current, target):
        raise IllegalTransition(build_id, current, target)
