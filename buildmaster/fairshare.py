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
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any

import attrs

__all__ = [
    "FairShareConfig",
    "Waiting",
    "Choice",
    "decayed",
    "charged",
    "deficits",
    "rank_owners",
    "is_aged",
    "choose",
]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


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
    #: "aged" or "fair share"
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
) -> Choice | None:
    """The job a free builder of one kind takes among ``waiting`` (the jobs it may take),
    given each owner's decayed ``usage`` of that kind at ``now`` and the chroots it ``held``.
    """
    jobs = list(waiting)
    if not jobs:
        return None
    aged = [j for j in jobs if is_aged(j.queued_at, now, config)]
    if aged:
        return Choice(min(aged, key=lambda j: (j.queued_at, j.id)), "aged")
    owners = {j.owner for j in jobs}
    shares = {o: (config.weight(o), usage.get(o, 0.0)) for o in owners}
    d = deficits(shares)
    owner = rank_owners(shares)[0]
    mine = sorted((j for j in jobs if j.owner == owner), key=lambda j: (-j.score, j.id))
    first = mine[0]
    if held and config.affinity_window:
        for j in mine[: config.affinity_window]:
            if j.score != first.score:
                break
            if j.chroot in held:
                return Choice(j, "fair share", d[owner], j is not first)
    return Choice(first, "fair share", d[owner])
