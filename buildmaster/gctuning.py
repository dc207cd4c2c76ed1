"""The garbage collector of a long-running master process.

CPython's cyclic collector stops the whole process while it runs. Its full (oldest
generation) passes walk every tracked object, and most of a master's tracked objects never
go away: the modules it imported, the service, its configuration. With the default
thresholds, everything that lives longer than a few hundred milliseconds (a call waiting
for its builder, a collection in flight) is promoted towards the oldest generation, and
the collector runs a full pass every few seconds under load: 40-140 ms each on a 2-vCPU
machine, a stall of the reactor that every collection and dispatch in flight waits out
(benchmarks/results/master.md, "Pauses of the garbage collector").

:func:`tune_garbage_collection` does two things:

* once the reactor runs, it collects what startup left behind and freezes what remains
  (``gc.freeze()``): those objects are no longer walked by any pass;
* it lets :data:`YOUNG_THRESHOLD` allocations (instead of 700) happen between passes of the
  youngest generation: most of the master's objects (a poll's Deferreds, an answer's values)
  die within a few scans, before they are ever promoted, so full passes become rare.

Reference cycles are still collected, only later. :mod:`buildmaster.tap` calls it for
``twistd buildmaster``; an application that embeds the master decides for itself (it is
process-wide).
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.logger import Logger

__all__ = ["YOUNG_THRESHOLD", "tune_garbage_collection"]

#: allocations (minus deallocations) of tracked objects between two young-generation passes
YOUNG_THRESHOLD = 10_000

_log = Logger()


def tune_garbage_collection(reactor: Any, young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Raise the young generation's threshold now; freeze the survivors of startup once
    ``reactor`` runs (at once if it already does)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    reactor.callWhenRunning(freeze_survivors)


def freeze_survivors() -> None:
    """Collect the garbage there is, then move every surviving object out of the
    collector's sight (:func:`gc.freeze`)."""
    gc.collect()
    gc.freeze()
    _log.info(
        "Garbage collector: {frozen} objects of the start-up frozen out of its passes;"
        " {young} allocations between young passes",
        frozen=gc.get_freeze_count(),
        young=gc.get_threshold()[0],
    )
