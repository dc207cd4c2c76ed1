"""The fair-share rules as pure functions (buildmaster/fairshare.py), table by table."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from buildmaster.fairshare import (
    FairShareConfig,
    Farm,
    Waiting,
    charged,
    choose,
    decayed,
    deficits,
    held_back,
    is_aged,
    rank_owners,
    reserve_size,
    share_level,
)

HOUR = 3600.0


@pytest.mark.parametrize(
    ("usage", "since", "now", "half_life", "expected"),
    [
        (100.0, 0.0, 0.0, HOUR, 100.0),  # no time passed
        (100.0, 0.0, HOUR, HOUR, 50.0),  # one half-life
        (100.0, 0.0, 2 * HOUR, HOUR, 25.0),  # two
        (100.0, 0.0, HOUR, 2 * HOUR, 100.0 * 0.5**0.5),  # half a half-life
        (100.0, 10.0, 5.0, HOUR, 100.0),  # a clock that went back changes nothing
        (0.0, 0.0, 10 * HOUR, HOUR, 0.0),
    ],
)
def test_usage_halves_every_half_life(
    usage: float, since: float, now: float, half_life: float, expected: float
) -> None:
    assert decayed(usage, since, now, half_life) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("usage", "since", "now", "seconds", "expected"),
    [
        (0.0, 0.0, 0.0, 300.0, 300.0),  # a claim charges its estimate
        (100.0, 0.0, HOUR, 300.0, 350.0),  # on top of the decayed usage
        (300.0, 0.0, 0.0, -300.0, 0.0),  # a released claim is refunded
        (300.0, 0.0, 0.0, -500.0, 0.0),  # never below nothing
        (300.0, 0.0, 0.0, 120.0, 420.0),  # a build that ran longer than its estimate
    ],
)
def test_a_charge_adds_to_the_decayed_usage(
    usage: float, since: float, now: float, seconds: float, expected: float
) -> None:
    assert charged(usage, since, now, HOUR, seconds) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("owners", "expected", "order"),
    [
        # nobody used anything: the weights' shares
        ({"a": (1.0, 0.0), "b": (1.0, 0.0)}, {"a": 0.5, "b": 0.5}, ["a", "b"]),
        ({"a": (3.0, 0.0), "b": (1.0, 0.0)}, {"a": 0.75, "b": 0.25}, ["a", "b"]),
        # a used three quarters: b is owed
        ({"a": (1.0, 300.0), "b": (1.0, 100.0)}, {"a": -0.25, "b": 0.25}, ["b", "a"]),
        # a weight of 3 is owed three quarters: a at 3/4 of the usage is even
        ({"a": (3.0, 300.0), "b": (1.0, 100.0)}, {"a": 0.0, "b": 0.0}, ["a", "b"]),
        # one owner alone: even
        ({"solo": (1.0, 1e6)}, {"solo": 0.0}, ["solo"]),
        # three owners, one who used nothing goes first
        (
            {"a": (1.0, 50.0), "b": (1.0, 50.0), "c": (1.0, 0.0)},
            {"a": 1 / 3 - 0.5, "b": 1 / 3 - 0.5, "c": 1 / 3},
            ["c", "a", "b"],
        ),
    ],
)
def test_the_owner_with_the_largest_deficit_is_served_first(
    owners: dict[str, tuple[float, float]], expected: dict[str, float], order: list[str]
) -> None:
    found = deficits(owners)
    assert found == pytest.approx(expected)
    assert rank_owners(owners) == order


@pytest.mark.parametrize(
    ("queued_at", "now", "aged"),
    [
        (0.0, 4 * HOUR - 1801, False),
        (0.0, 4 * HOUR - 1800, True),  # bound 4 h minus slack 30 min: at 3.5 h
        (0.0, 10 * HOUR, True),
        (100.0, 50.0, False),
    ],
)
def test_a_job_is_aged_at_the_bound_minus_the_slack(
    queued_at: float, now: float, aged: bool
) -> None:
    assert is_aged(queued_at, now, FairShareConfig()) is aged


def job(id: int, owner: str, score: int = 0, at: float = 0.0, chroot: Any = None) -> Waiting:
    return Waiting(id, owner, score, at, chroot)


CONFIG = FairShareConfig(aging_bound=1000.0, aging_slack=100.0, affinity_window=3)


@pytest.mark.parametrize(
    ("jobs", "usage", "now", "held", "expected", "rule", "by_affinity"),
    [
        # nothing waits
        ([], {}, 0.0, (), None, None, False),
        # one owner: score, then the oldest (lowest id), as before fair shares
        ([job(1, "a", 10), job(2, "a", 30), job(3, "a", 30)], {}, 0.0, (), 2, "fair share", False),
        # b has used less: b's job, though a's scores higher
        (
            [job(1, "a", 900), job(2, "b", 1)],
            {"a": 600.0, "b": 0.0},
            0.0,
            (),
            2,
            "fair share",
            False,
        ),
        # even usage and weight: the smaller owner key
        ([job(1, "b", 900), job(2, "a", 1)], {}, 0.0, (), 2, "fair share", False),
        # an aged job goes first whoever owns it, the longest waiting first
        (
            [job(1, "a", 900, at=500.0), job(2, "b", 0, at=10.0), job(3, "c", 0, at=0.0)],
            {"b": 1e6, "c": 1e6},
            950.0,
            (),
            3,
            "aged",
            False,
        ),
        # not aged yet (899 s < 900 s): fair share
        (
            [job(1, "a", 0, at=0.0), job(2, "b", 0, at=1.0)],
            {"a": 10.0},
            899.0,
            (),
            2,
            "fair share",
            False,
        ),
        # affinity: of the owner's best-scored jobs, the one whose chroot the builder holds
        (
            [job(1, "a", 5, chroot="x"), job(2, "a", 5, chroot="y"), job(3, "a", 9, chroot="z")],
            {},
            0.0,
            {"x"},
            3,  # a better score is never passed over for a chroot
            "fair share",
            False,
        ),
        (
            [job(1, "a", 5, chroot="x"), job(2, "a", 5, chroot="y"), job(3, "b", 5, chroot="y")],
            {"b": 100.0},
            0.0,
            {"y"},
            2,  # a's turn; its job on chroot y
            "fair share",
            True,
        ),
        (
            [job(i, "a", 5, chroot="x") for i in range(1, 4)] + [job(4, "a", 5, chroot="y")],
            {},
            0.0,
            {"y"},
            1,  # y is beyond the window of 3
            "fair share",
            False,
        ),
    ],
)
def test_choose(
    jobs: list[Waiting],
    usage: dict[str, float],
    now: float,
    held: Any,
    expected: int | None,
    rule: str | None,
    by_affinity: bool,
) -> None:
    choice = choose(jobs, usage, now, CONFIG, held)
    if expected is None:
        assert choice is None
        return
    assert choice is not None
    assert (choice.job.id, choice.rule, choice.by_affinity) == (expected, rule, by_affinity)


def test_weights_change_whose_turn_it_is() -> None:
    jobs = [job(1, "a"), job(2, "b")]
    usage = {"a": 200.0, "b": 100.0}
    assert choose(jobs, usage, 0.0, CONFIG).job.id == 2  # type: ignore[union-attr]
    heavy = FairShareConfig(aging_bound=1000.0, aging_slack=100.0, weights={"a": 3.0})
    choice = choose(jobs, usage, 0.0, heavy)
    assert choice is not None and choice.job.id == 1
    assert choice.deficit == pytest.approx(0.75 - 2 / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"half_life": 0.0}, "half_life must be positive"),
        ({"aging_bound": 100.0, "aging_slack": 100.0}, "aging_slack must be smaller"),
        ({"aging_slack": -1.0}, "aging_slack must not be negative"),
        ({"weights": {"a": 0.0}}, "the weight of 'a' must be positive"),
        ({"affinity_window": -1}, "affinity_window"),
        ({"reserve": -0.1}, "reserve must be a fraction from 0 to below 1"),
        ({"reserve": 1.0}, "reserve must be a fraction from 0 to below 1"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FairShareConfig(**kwargs)


@pytest.mark.parametrize(
    ("builders", "reserve", "expected"),
    [
        (160, 0.03, 4),  # the default: 3 % rounded down
        (160, 0.02, 3),
        (80, 0.02, 1),  # at least one
        (10, 0.02, 1),
        (2, 0.02, 1),
        (1, 0.02, 0),  # never the only builder
        (160, 0.0, 0),  # off
        (10, 0.5, 5),
        (4, 0.9, 3),  # never all of them
    ],
)
def test_the_reserve_is_a_fraction_of_the_kinds_builders(
    builders: int, reserve: float, expected: int
) -> None:
    assert reserve_size(builders, FairShareConfig(reserve=reserve)) == expected


@pytest.mark.parametrize(
    ("owners", "capacity", "level"),
    [
        # a wants 1, b 10 of 5 builders: a gets its 1, b the 4 left
        ({"a": (1.0, 1), "b": (1.0, 10)}, 5, 4.0),
        # every demand fits: no level
        ({"a": (1.0, 1), "b": (1.0, 2)}, 5, math.inf),
        # both want more than half: half each
        ({"a": (1.0, 5), "b": (1.0, 5)}, 6, 3.0),
        # weight 3 against 1: 6 and 2 of 8
        ({"a": (3.0, 100), "b": (1.0, 100)}, 8, 2.0),
        # exactly fits: b's share is its demand
        ({"a": (1.0, 2), "b": (1.0, 4)}, 6, 4.0),
        # three owners, two small
        ({"a": (1.0, 1), "b": (1.0, 2), "flood": (1.0, 2000)}, 157, 154.0),
    ],
)
def test_fair_shares_are_max_min_shares_of_the_builders(
    owners: dict[str, tuple[float, int]], capacity: int, level: float
) -> None:
    found = share_level(owners, capacity)
    assert found == level
    if level < math.inf:  # the shares add up to the builders
        assert sum(min(d, level * w) for w, d in owners.values()) == pytest.approx(capacity)


RESERVE = FairShareConfig(aging_bound=1000.0, aging_slack=100.0, reserve=0.2)  # 2 of 10


@pytest.mark.parametrize(
    ("waiting", "farm", "config", "expected"),
    [
        # 2 of 10 idle, the flood runs 6 and wants 50 more, q runs 2: the flood's share of
        # the 8 beyond the reserve is 6 (q's demand, 2, fits): it is held back, q is not
        ({"flood": 50}, Farm(10, 2, {"flood": 6, "q": 2}), RESERVE, {"flood"}),
        # 3 idle: more than the reserve, nobody is held back
        ({"flood": 50}, Farm(10, 3, {"flood": 6, "q": 2}), RESERVE, set()),
        # the flood alone with work of the kind: nobody to keep builders for
        ({"flood": 50}, Farm(10, 2, {"flood": 8}), RESERVE, set()),
        # q waits too (7 in all): the level is 4; the flood runs 6 (held), q 2 (not)
        ({"flood": 50, "q": 5}, Farm(10, 2, {"flood": 6, "q": 2}), RESERVE, {"flood"}),
        # a and b both run their share (4 of 8): both held, the reserve stays idle
        ({"a": 3, "b": 3}, Farm(10, 2, {"a": 4, "b": 4}), RESERVE, {"a", "b"}),
        # b weighs 3: its share is 6, a's 2; only a is held back
        (
            {"a": 3, "b": 3},
            Farm(10, 2, {"a": 4, "b": 4}),
            attrs.evolve(RESERVE, weights={"b": 3.0}),
            {"a"},
        ),
        # no reserve
        (
            {"flood": 50},
            Farm(10, 1, {"flood": 8, "q": 1}),
            attrs.evolve(RESERVE, reserve=0.0),
            set(),
        ),
        # a single builder is never a reserve
        ({"a": 5, "b": 5}, Farm(1, 1, {}), RESERVE, set()),
    ],
)
def test_owners_over_their_share_may_not_take_the_last_idle_builders(
    waiting: dict[str, int], farm: Farm, config: FairShareConfig, expected: set[str]
) -> None:
    assert held_back(waiting, farm, config) == expected


FLOOD_FARM = Farm(10, 2, {"flood": 6, "q": 2})


@pytest.mark.parametrize(
    ("jobs", "usage", "now", "farm", "expected", "rule"),
    [
        # the flood's turn by deficit (q used more lately), but it is over its share and the
        # builder is one of the reserve: q's job, by the reserve
        (
            [job(1, "flood", 900), job(2, "q", 0)],
            {"flood": 100.0, "q": 1000.0},
            0.0,
            FLOOD_FARM,
            2,
            "reserve",
        ),
        # one more idle builder: the flood's job
        (
            [job(1, "flood", 900), job(2, "q", 0)],
            {"flood": 100.0, "q": 1000.0},
            0.0,
            Farm(10, 3, {"flood": 6, "q": 2}),
            1,
            "fair share",
        ),
        # only the flood waits: the builder stays idle
        ([job(1, "flood", 900)], {"flood": 100.0}, 0.0, FLOOD_FARM, None, None),
        # an aged job is never held back
        ([job(1, "flood", 900, at=0.0)], {"flood": 100.0}, 950.0, FLOOD_FARM, 1, "aged"),
        # q's turn anyway: the reserve changes nothing
        (
            [job(1, "flood", 900), job(2, "q", 0)],
            {"flood": 1000.0, "q": 100.0},
            0.0,
            FLOOD_FARM,
            2,
            "fair share",
        ),
    ],
)
def test_the_reserve_keeps_the_last_idle_builders_for_owners_under_their_share(
    jobs: list[Waiting],
    usage: dict[str, float],
    now: float,
    farm: Farm,
    expected: int | None,
    rule: str | None,
) -> None:
    choice = choose(jobs, usage, now, RESERVE, farm=farm)
    if expected is None:
        assert choice is None
        # without the farm (no reserve) the flood's job
        assert choose(jobs, usage, now, RESERVE) is not None
        return
    assert choice is not None
    assert (choice.job.id, choice.rule) == (expected, rule)
