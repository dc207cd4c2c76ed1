"""Fair shares with aging: which waiting job a free builder takes. Pure.

The rules (the claim's SQL in :mod:`buildmaster.store.jobs` implements the same, and the
simulator, :mod:`buildmaster.simulate`, runs them; tests hold the three to one answer):

1. **Owners.** Every waiting job belongs to the owner of its archive (a PPA's owner; the
   primary archive is one owner, its distribution's). Owners are compared per *kind* of
   builder: the processors it builds for and whether it is virtualized.
2. **Usage.** Each owner's usage of a kind is builder-seconds with exponential decay: a
   claim charges the job's estimated duration at once (so that the next claim, a moment
   later, already sees it), and when the job leaves its builder the charge is corrected to
   what it really used. Usage halves every ``half_life`` seconds.
3. **Deficit.** Among the owners with waiting work of the kind, an owner's deficit is its
   weight's share of their weights minus its usage's share of their usage (0 when none of
   them used anything). The builder takes a job of the owner with the largest deficit (the
   owner with the smaller key on a tie); within an owner, the score decides as before
   (highest first, then the oldest job: the lowest id).
4. **Aging.** A job that has waited ``aging_bound - aging_slack`` seconds or more is *aged*:
   aged jobs go before every fair-share choice, the longest waiting first. So while builders
   of its kind keep freeing up, no job waits much past ``aging_after``; ``aging_slack`` is the
   time the aged jobs ahead of it and the next free builder may take (the promise is
   ``aging_bound``).
5. **Affinity.** Builders that claim together share out the chosen jobs so that each goes
   to one that holds its chroot (the claim's SQL; the simulator: a job arriving at a farm
   with several idle builders). Optionally (``affinity_window``, not in the SQL yet): once
   the owner is chosen, among its jobs of the best score (the first ``affinity_window`` of
   them in order) the builder takes the first whose chroot it holds, else the first. Neither
   changes whose turn it is nor a score's order (aged jobs are not reordered).
6. **Reserve.** When builders of a kind are scarce, the last few idle ones are kept for the
   owners under their fair share, so that a new build of a quiet owner starts at once while
   another floods the queue (there is no preemption: without it, it waits for the next
   builder to free up). ``R`` builders of the kind's ``N`` are the reserve (``reserve`` is a
   fraction of ``N``: at least 1, at most ``N - 1``; 0 turns the rule off). An owner's *fair
   share* is its max-min share of the ``N - R`` other builders: each owner with work of the
   kind (waiting or running) demands its waiting and running jobs; the builders are shared
   out in proportion to the weights, none to an owner beyond its demand, and what that
   leaves over goes to the others (the *level* ``L``: an owner's share is ``L * weight``, or
   its whole demand if that is less). An owner is *over its share* when it runs at least
   ``L * weight`` jobs of the kind. While at most ``R`` builders of the kind are idle (the
   asking one included), an owner over its share may not take one: the builder takes the
   best job of the owner with the largest deficit among the others, or stays idle. So the
   rule costs an owner at most ``R`` builders and only while it runs more than its share
   and others want builders too; an owner alone with work of the kind is never held back,
   nor is an aged job (rule 4 comes first), nor an owner whose demand fits in its share.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any

import attrs

__all__ = [
    "FairShareConfig",
    "Waiting",
    "Farm",
    "Choice",
    "decayed",
    "charged",
    "deficits",
    "rank_owners",
    "is_aged",
    "reserve_size",
    "share_level",
    "held_back",
    "choose",
]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be a fraction from 0 to below 1, not {value!r}")


def _weights(instance: object, attribute: attrs.Attribute[Any], value: Mapping[Any, float]) -> None:
    for owner, weight in value.items():
        if not weight > 0:
            raise ValueError(f"the weight of {owner!r} must be positive, not {weight!r}")


@attrs.frozen
class FairShareConfig:
    """The rules' settings (the database's ``fairshare`` row and ``shareweight`` table)."""

    #: seconds after which a charge counts half
    half_life: float = attrs.field(default=900.0, validator=_positive)
    #: no job should wait longer than this (seconds) while builders of its kind free up
    aging_bound: float = attrs.field(default=4 * 3600.0, validator=_positive)
    #: a job is aged this long before the bound (the time it may still need to start)
    aging_slack: float = attrs.field(default=1800.0, validator=_not_negative)
    #: the weight of owners not in ``weights``
    default_weight: float = attrs.field(default=1.0, validator=_positive)
    weights: Mapping[Any, float] = attrs.field(factory=dict, validator=_weights)
    #: how many of an owner's best jobs affinity looks at (0, the default: the claim's SQL
    #: does not do this yet; the simulator can: ``--affinity-window``)
    affinity_window: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: the reserve: this fraction of a kind's builders (at least 1, at most all but one; 0:
    #: none) is kept for owners under their fair share while builders of the kind are scarce
    reserve: float = attrs.field(default=0.03, validator=_fraction)

    def __attrs_post_init__(self) -> None:
        if self.aging_slack >= self.aging_bound:
            raise ValueError("aging_slack must be smaller than aging_bound")

    @property
    def aging_after(self) -> float:
        """Seconds of waiting after which a job is aged."""
        return self.aging_bound - self.aging_slack

    def weight(self, owner: Hashable) -> float:
        return float(self.weights.get(owner, self.default_weight))


def decayed(usage: float, since: float, now: float, half_life: float) -> float:
    """``usage`` recorded at ``since``, as it counts at ``now``."""
    if now <= since:
        return usage
    return usage * 0.5 ** ((now - since) / half_life)


def charged(usage: float, since: float, now: float, half_life: float, seconds: float) -> float:
    """The usage at ``now`` after charging ``seconds`` (negative: a refund); never below 0."""
    return max(0.0, decayed(usage, since, now, half_life) + seconds)


def deficits(owners: Mapping[Any, tuple[float, float]]) -> dict[Any, float]:
    """Each owner's deficit from ``{owner: (weight, usage)}`` (the owners with waiting work):
    weight share minus usage share."""
    total_weight = sum(w for w, _ in owners.values())
    total_usage = sum(u for _, u in owners.values())
    return {
        owner: w / total_weight - (u / total_usage if total_usage > 0 else 0.0)
        for owner, (w, u) in owners.items()
    }


def rank_owners(owners: Mapping[Any, tuple[float, float]]) -> list[Any]:
    """The owners in the order they are served: largest deficit first, then smaller key."""
    d = deficits(owners)
    return sorted(d, key=lambda owner: (-d[owner], owner))


def is_aged(queued_at: float, now: float, config: FairShareConfig) -> bool:
    return now - queued_at >= config.aging_after


def reserve_size(builders: int, config: FairShareConfig) -> int:
    """How many of a kind's ``builders`` are its reserve: ``reserve`` of them rounded down,
    at least 1 and at most ``builders - 1`` (0 when ``reserve`` is 0 or there is one builder)."""
    if not config.reserve or builders < 2:
        return 0
    return min(builders - 1, max(1, math.floor(config.reserve * builders)))


def share_level(owners: Mapping[Any, tuple[float, int]], capacity: float) -> float:
    """The level ``L`` of the max-min fair shares of ``capacity`` builders among ``{owner:
    (weight, demand)}``: an owner's share is ``min(demand, L * weight)``, and the shares add
    up to ``capacity``; ``math.inf`` when every demand fits.

    The owners in order of demand per weight (then key): the first whose demand per weight
    is at least what is left for it and those after it, per weight of theirs, sets the level.
    The claim's SQL computes it the same way, step for step."""
    ordered = sorted(owners, key=lambda o: (owners[o][1] / owners[o][0], o))
    total_weight = sum(owners[o][0] for o in ordered)
    before_demand = 0
    before_weight = 0.0
    for owner in ordered:
        weight, demand = owners[owner]
        level = (capacity - before_demand) / (total_weight - before_weight)
        if demand >= level * weight:
            return level
        before_demand += demand
        before_weight += weight
    return math.inf


@attrs.frozen
class Farm:
    """A kind's builders as the reserve sees them when one of them asks for a job."""

    #: the builders of the kind (that may take jobs)
    builders: int
    #: of which idle (no job), the asking one included
    idle: int
    #: each owner's jobs of the kind on a builder
    running: Mapping[Any, int] = attrs.field(factory=dict)


def held_back(waiting: Mapping[Any, int], farm: Farm, config: FairShareConfig) -> frozenset[Any]:
    """The owners that may not take the asking builder: those over their fair share while at
    most the reserve is idle. ``waiting``: each owner's waiting jobs of the kind."""
    reserve = reserve_size(farm.builders, config)
    if not reserve or farm.idle > reserve:
        return frozenset()
    demand = {o: n for o, n in waiting.items() if n > 0}
    for owner, n in farm.running.items():
        if n > 0:
            demand[owner] = demand.get(owner, 0) + n
    if len(demand) < 2:
        return frozenset()  # nobody to keep builders for
    level = share_level(
        {o: (config.weight(o), d) for o, d in demand.items()}, farm.builders - reserve
    )
    return frozenset(o for o in demand if farm.running.get(o, 0) >= level * config.weight(o))


@attrs.frozen
class Waiting:
    """A waiting job as the rules see it."""

    id: int
    owner: Any
    score: int
    queued_at: float
    chroot: Any = None


@attrs.frozen
class Choice:
    """The job a builder takes, and why (what operators are shown)."""

    job: Waiting
    #: "aged", "fair share", or "reserve" (fair share, but the owner whose turn it was is
    #: over its share and the builder is one of the reserve)
    rule: str
    #: the owner's deficit when it was chosen (``None`` for an aged job)
    deficit: float | None = None
    #: whether affinity picked it over the first of its owner's best jobs
    by_affinity: bool = False


def choose(
    waiting: Iterable[Waiting],
    usage: Mapping[Any, float],
    now: float,
    config: FairShareConfig,
    held: Collection[Any] = (),
    farm: Farm | None = None,
) -> Choice | None:
    """The job a free builder of one kind takes among ``waiting`` (the jobs it may take),
    given each owner's decayed ``usage`` of that kind at ``now`` and the chroots it ``held``;
    with ``farm`` (the kind's builders), the reserve too. ``None``: it takes nothing.
    """
    jobs = list(waiting)
    if not jobs:
        return None
    aged = [j for j in jobs if is_aged(j.queued_at, now, config)]
    if aged:
        return Choice(min(aged, key=lambda j: (j.queued_at, j.id)), "aged")
    counts: dict[Any, int] = {}
    for j in jobs:
        counts[j.owner] = counts.get(j.owner, 0) + 1
    shares = {o: (config.weight(o), usage.get(o, 0.0)) for o in counts}
    d = deficits(shares)
    ranked = rank_owners(shares)
    rule = "fair share"
    if farm is not None:
        over = held_back(counts, farm, config)
        if ranked[0] in over:
            rule = "reserve"
            ranked = [o for o in ranked if o not in over]
            if not ranked:
                return None
    owner = ranked[0]
    mine = sorted((j for j in jobs if j.owner == owner), key=lambda j: (-j.score, j.id))
    first = mine[0]
    if held and config.affinity_window:
        for j in mine[: config.affinity_window]:
            if j.score != first.score:
                break
            if j.chroot in held:
                return Choice(j, rule, d[owner], j is not first)
    return Choice(first, rule, d[owner])
