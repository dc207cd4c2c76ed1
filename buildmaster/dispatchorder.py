"""The order in which builders will take the waiting jobs of one kind: a forecast. Pure.

A free builder takes one job at a time by the rules of :mod:`buildmaster.fairshare` (aged
jobs first, the longest waiting first; then the owner with the largest deficit; within an
owner, the best score, then the oldest job). :func:`dispatch_order` applies those rules over
and over to the jobs waiting now, as if builders freed up one after the other, and gives
the order the jobs would go in. It gives the same order as calling
:func:`buildmaster.fairshare.choose` again and again, charging each chosen job's estimate to
its owner and taking it out of the queue (``tests/test_dispatch_order.py`` holds the two,
and the claim's SQL, to one answer; where two owners' deficits are equal in real numbers,
each adds the usages up in its own order, and the rounding may break the tie either way);
it is only quicker: choosing again and again would look at every job for every one; this
looks at one owner per weight for each job taken.

What the forecast assumes (usage changes as jobs are claimed, so the order is a forecast):

* **Each job taken charges its estimate to its owner at once**, as the claim does, and
  the charge stays: builds take what they were estimated to take.
* **The time is now** for the whole forecast: usage does not decay further, and only the
  jobs that are aged now go first (a job that will age while those before it are taken
  keeps its fair-share place).
* **Nothing else changes**: no job arrives, is cancelled, rescored or suspended.
* **Builders of one processor**: a builder of several processors weighs the owners over all
  of them (its claim may then differ).
* Chroot affinity changes which builder takes a job, never the order.

:func:`take_turns` is the fair-share part on its own, one job at a time, for a caller that has
the jobs already in each owner's order (the store reads them so from PostgreSQL's index, and
orders a large queue in slices between which the reactor runs).

How it is quick: owners of the same weight are served in the order of their usage (the
smaller first: with equal weights the deficit only differs by usage), so each weight's
owners are kept in a heap by usage, and only the first of each weight is compared by
deficit (:func:`buildmaster.fairshare.deficits`) at each step.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from buildmaster.fairshare import FairShareConfig, Waiting, deficits, is_aged

__all__ = ["dispatch_order", "take_turns"]

T = TypeVar("T")


class _Others:
    """Stands for the owners that are not the first of their weight in a deficit reckoning
    (their weight and usage count in the totals; none of them can be chosen)."""


_OTHERS = _Others()


def dispatch_order(
    jobs: Iterable[Waiting],
    seconds: Mapping[int, float],
    usage: Mapping[Any, float],
    now: float,
    config: FairShareConfig,
) -> tuple[list[Waiting], int]:
    """The waiting jobs of one kind in the order free builders would take them, and how
    many at its head are aged.

    :param seconds: each job's estimated duration, by job id (what a claim charges).
    :param usage: each owner's usage of the kind, decayed to ``now``.
    """
    waiting = list(jobs)
    used = {owner: float(value) for owner, value in usage.items()}
    aged = sorted(
        (j for j in waiting if is_aged(j.queued_at, now, config)), key=lambda j: (j.queued_at, j.id)
    )
    for job in aged:
        used[job.owner] = used.get(job.owner, 0.0) + seconds.get(job.id, 0.0)
    aged_ids = {j.id for j in aged}
    # each owner's jobs, the best last (taken with pop())
    queues: dict[Any, list[Waiting]] = {}
    for job in waiting:
        if job.id not in aged_ids:
            queues.setdefault(job.owner, []).append(job)
    for queue in queues.values():
        queue.sort(key=lambda j: (j.score, -j.id))
    order = list(aged)
    order.extend(take_turns(queues, lambda job: seconds.get(job.id, 0.0), used, config))
    return order, len(aged)


def take_turns(
    queues: dict[Any, list[T]],
    charge_of: Callable[[T], float],
    usage: Mapping[Any, float],
    config: FairShareConfig,
) -> Iterator[T]:
    """The jobs of ``queues`` (each owner's, its best *last*; emptied as they are taken) one
    at a time in the order the fair-share rule takes them: the owner with the largest
    deficit, each job taken charging ``charge_of(job)`` to its owner. ``usage``: each
    owner's usage now (the aged jobs, which go before, already charged)."""
    used = {owner: float(value) for owner, value in usage.items()}
    queues = {owner: queue for owner, queue in queues.items() if queue}
    # per weight, the owners by usage (then by key: the rules' tie-break)
    heaps: dict[float, list[tuple[float, Any]]] = {}
    for owner in queues:
        heaps.setdefault(config.weight(owner), []).append((used.get(owner, 0.0), owner))
    for heap in heaps.values():
        heapq.heapify(heap)
    live = {weight: heap for weight, heap in heaps.items() if heap}
    total_weight = sum(config.weight(o) for o in queues)
    total_usage = sum(used.get(o, 0.0) for o in queues)
    while len(live) > 1:
        firsts = {heap[0][1]: (weight, heap[0][0]) for weight, heap in live.items()}
        d = deficits(
            {
                **firsts,
                _OTHERS: (
                    total_weight - sum(w for w, _ in firsts.values()),
                    total_usage - sum(u for _, u in firsts.values()),
                ),
            }
        )
        chosen = min(firsts, key=lambda o: (-d[o], o))
        weight = firsts[chosen][0]
        heap = live[weight]
        owner_usage, owner = heap[0]
        queue = queues[owner]
        job = queue.pop()
        yield job
        charge = charge_of(job)
        owner_usage += charge
        total_usage += charge
        if queue:
            heapq.heapreplace(heap, (owner_usage, owner))
        else:
            heapq.heappop(heap)
            total_weight -= weight
            total_usage -= owner_usage
            if not heap:
                del live[weight]
    # one weight left: its owners by usage alone
    for heap in live.values():
        while heap:
            owner_usage, owner = heap[0]
            queue = queues[owner]
            job = queue.pop()
            yield job
            if queue:
                heapq.heapreplace(heap, (owner_usage + charge_of(job), owner))
            else:
                heapq.heappop(heap)
