"""The build state transition table (pure)."""

from __future__ import annotations

import pytest

from buildmaster.enums import BuildStatus
from buildmaster.transitions import (
    ALLOWED,
    FINAL,
    RETRYABLE,
    IllegalTransition,
    can_transition,
    check_transition,
)

S = BuildStatus


def test_launchpad_values_are_kept() -> None:
    assert [(s.name, s.value) for s in BuildStatus] == [
        ("NEEDSBUILD", 0),
        ("FULLYBUILT", 1),
        ("FAILEDTOBUILD", 2),
        ("MANUALDEPWAIT", 3),
        ("CHROOTWAIT", 4),
        ("SUPERSEDED", 5),
        ("BUILDING", 6),
        ("FAILEDTOUPLOAD", 7),
        ("UPLOADING", 8),
        ("CANCELLING", 9),
        ("CANCELLED", 10),
        ("GATHERING", 11),
    ]


def test_every_state_has_a_row() -> None:
    assert set(ALLOWED) == set(BuildStatus)


def test_needsbuild_and_building_may_go_anywhere_else() -> None:
    for start in (S.NEEDSBUILD, S.BUILDING):
        for target in BuildStatus:
            assert can_transition(start, target) == (target != start)


def test_failed_and_cancelled_builds_may_be_retried() -> None:
    for state in (S.FAILEDTOBUILD, S.MANUALDEPWAIT, S.CHROOTWAIT, S.FAILEDTOUPLOAD, S.CANCELLED):
        assert state in RETRYABLE
        assert can_transition(state, S.NEEDSBUILD)
        assert not can_transition(state, S.BUILDING)
        assert not can_transition(state, S.FULLYBUILT)


def test_final_states_go_nowhere() -> None:
    assert FINAL == {S.FULLYBUILT, S.SUPERSEDED}
    for state in FINAL:
        for target in BuildStatus:
            assert not can_transition(state, target)


def test_cancelling_only_ends_cancelled() -> None:
    assert [t for t in BuildStatus if can_transition(S.CANCELLING, t)] == [S.CANCELLED]


def test_illegal_transition_is_refused_with_a_clear_error() -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(S.FULLYBUILT, S.NEEDSBUILD, build_id=42)
    assert (
        str(info.value)
        == "build 42 cannot go from FULLYBUILT to NEEDSBUILD (allowed from FULLYBUILT: nothing: it is final)"
    )
    with pytest.raises(IllegalTransition, match="allowed from CANCELLING: CANCELLED"):
        check_transition(S.CANCELLING, S.FULLYBUILT)
    check_transition(S.BUILDING, S.FULLYBUILT)  # allowed: no exception
