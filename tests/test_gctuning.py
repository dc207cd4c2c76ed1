"""The master's garbage collector: the objects of the start-up are out of its passes, the
young generation gets more room, reference cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest_twisted

from buildmaster.gctuning import YOUNG_THRESHOLD, tune_garbage_collection


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest_twisted.ensureDeferred
async def test_what_exists_at_start_up_leaves_the_collectors_passes(captured_log: Any) -> None:
    from twisted.internet import reactor

    kept = [_Node() for _ in range(2000)]  # like a master's long-lived objects
    assert any(o is kept[-1] for o in gc.get_objects())
    tracked_before = len(gc.get_objects())

    tune_garbage_collection(reactor)  # the reactor runs: the survivors are frozen at once

    # a full pass walks what gc.get_objects() lists: the start-up's objects are gone from it
    assert not any(o is kept[-1] for o in gc.get_objects())
    assert gc.get_freeze_count() >= len(kept)
    assert len(gc.get_objects()) < tracked_before - len(kept)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD == 10_000
    messages = [e.get("log_format", "") for e in captured_log.events]
    assert any(m.startswith("Garbage collector: {frozen} objects") for m in messages)


@pytest_twisted.ensureDeferred
async def test_cycles_made_after_start_up_are_still_collected_by_its_own_passes() -> None:
    from twisted.internet import reactor

    tune_garbage_collection(reactor)
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone does not free it
    # no explicit gc.collect(): the collector's own passes still run (a threshold of 0, or
    # gc.disable(), would stop them and leak every cycle)
    survivors: list[list[int]] = [
        [] for _ in range(YOUNG_THRESHOLD + 100)
    ]  # one young pass at least
    assert gone() is None
    del survivors
