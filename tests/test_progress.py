"""Stuck builder states (pure, plain asserts)."""

from __future__ import annotations

import pytest

from buildmaster.enums import BuilderStatus
from buildmaster.progress import Stuck, Watch, must_move, observe

IDLE, BUILDING, ABORTING, WAITING = (
    BuilderStatus.IDLE,
    BuilderStatus.BUILDING,
    BuilderStatus.ABORTING,
    BuilderStatus.WAITING,
)


@pytest.mark.parametrize(
    ("state", "running_ours", "cancelling", "watched"),
    [
        (IDLE, False, False, False),
        (WAITING, False, False, False),
        (WAITING, True, False, False),
        # our build runs as long as it needs
        (BUILDING, True, False, False),
        (BUILDING, True, True, False),
        # leftovers, a lost build, a build() that faulted half-way: aborted, must stop
        (BUILDING, False, False, True),
        # an abort ends by itself, except our cancelled build's (cancel_timeout covers it)
        (ABORTING, False, False, True),
        (ABORTING, True, False, True),
        (ABORTING, True, True, False),
    ],
)
def test_which_states_must_end_by_themselves(
    state: BuilderStatus, running_ours: bool, cancelling: bool, watched: bool
) -> None:
    assert must_move(state, running_ours, cancelling) is watched


def test_a_state_is_watched_from_the_first_poll_that_sees_it() -> None:
    watch, stuck = observe(
        None, ABORTING, "B-1", running_ours=False, cancelling=False, now=10, timeout=300
    )
    assert (watch, stuck) == (Watch(ABORTING, "B-1", 10), None)


def test_the_same_state_for_the_timeout_is_stuck() -> None:
    watch = Watch(ABORTING, "B-1", 10)
    kwargs = dict(running_ours=False, cancelling=False, timeout=300.0)
    assert observe(watch, ABORTING, "B-1", now=309.9, **kwargs) == (watch, None)  # type: ignore[arg-type]
    assert observe(watch, ABORTING, "B-1", now=310, **kwargs) == (  # type: ignore[arg-type]
        watch,
        Stuck(ABORTING, "B-1", 300),
    )


@pytest.mark.parametrize(
    ("state", "build_id"), [(BUILDING, "B-1"), (ABORTING, "B-2"), (ABORTING, None)]
)
def test_any_change_starts_the_clock_again(state: BuilderStatus, build_id: str | None) -> None:
    watch = Watch(ABORTING, "B-1", 10)
    assert observe(
        watch, state, build_id, running_ours=False, cancelling=False, now=500, timeout=300
    ) == (Watch(state, build_id, 500), None)


@pytest.mark.parametrize("state", [IDLE, WAITING])
def test_a_state_that_needs_no_watching_drops_the_watch(state: BuilderStatus) -> None:
    watch = Watch(ABORTING, "B-1", 10)
    assert observe(
        watch, state, "B-1", running_ours=False, cancelling=False, now=900, timeout=300
    ) == (None, None)


def test_our_build_running_is_never_stuck() -> None:
    assert observe(
        Watch(BUILDING, "B-1", 0),
        BUILDING,
        "B-1",
        running_ours=True,
        cancelling=False,
        now=10**6,
        timeout=300,
    ) == (None, None)


def test_the_reason_says_what_and_what_to_do() -> None:
    aborting = Stuck(ABORTING, "PACKAGEBUILD-7", 300.4)
    assert aborting.reason(virtualized=False) == (
        "stuck ABORTING PACKAGEBUILD-7 for 300 s: an abort that does not end (nothing left"
        " to kill, or processes that will not die); restart the builder daemon"
    )
    assert aborting.reason(virtualized=True).endswith("; resetting its VM")
    building = Stuck(BUILDING, "PACKAGEBUILD-7", 301)
    assert building.reason(virtualized=False) == (
        "stuck BUILDING PACKAGEBUILD-7 for 301 s: it does not stop a build it was told to"
        " abort; restart the builder daemon"
    )
    assert Stuck(ABORTING, None, 300).what == "stuck ABORTING for 300 s"
