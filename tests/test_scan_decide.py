"""The scan's decision (buildmaster.scan.decide): what the builder says and what the
database says, in; the steps of the scan, out. Pure: no sockets, no reactor."""

from __future__ import annotations

import attrs
import pytest

from buildmaster.enums import (
    BuilderCleanStatus,
    BuilderResult,
    BuilderStatus,
    BuildQueueStatus,
    BuildStatus,
)
from buildmaster.progress import Stuck
from buildmaster.scan.decide import TABLE, Decision, Seen, Step, decide

IDLE, BUILDING = BuilderStatus.IDLE, BuilderStatus.BUILDING
ABORTING, WAITING = BuilderStatus.ABORTING, BuilderStatus.WAITING
OURS = "PACKAGEBUILD-7"
OTHER = "PACKAGEBUILD-8"
CLEAN, DIRTY = BuilderCleanStatus.CLEAN, BuilderCleanStatus.DIRTY


def job(
    state: BuilderStatus,
    build_id: str | None,
    queue: BuildQueueStatus = BuildQueueStatus.RUNNING,
    build: BuildStatus = BuildStatus.BUILDING,
    result: BuilderResult | None = None,
) -> Seen:
    """The database gives the builder the build ``OURS``."""
    return Seen(state, build_id, result, queue, OURS, build, DIRTY)


def no_job(
    state: BuilderStatus,
    build_id: str | None = None,
    clean: BuilderCleanStatus = DIRTY,
    result: BuilderResult | None = None,
) -> Seen:
    return Seen(state, build_id, result, clean_status=clean)


S = Step
CANCELLING = BuildQueueStatus.CANCELLING
NEEDSBUILD = BuildStatus.NEEDSBUILD

CASES = [
    # an idle builder takes its next job, after settling the one the database gave it
    (no_job(IDLE), (S.NEXT_JOB,), None),
    (no_job(IDLE, clean=CLEAN), (S.NEXT_JOB,), None),
    (job(IDLE, None, CANCELLING), (S.CANCEL_IDLE, S.NEXT_JOB), None),
    (job(IDLE, None, build=NEEDSBUILD), (S.RELEASE_CLAIM, S.NEXT_JOB), None),
    (job(IDLE, None, CANCELLING, NEEDSBUILD), (S.CANCEL_IDLE, S.NEXT_JOB), None),
    (job(IDLE, None), (S.LOST, S.NEXT_JOB), "the builder is idle: it lost the build"),
    # building ours: its log tail kept, or aborted when cancelled
    (job(BUILDING, OURS), (S.KEEP_LOGTAIL,), None),
    (job(BUILDING, OURS, CANCELLING), (S.ABORT_CANCELLED,), None),
    (job(BUILDING, OURS, build=NEEDSBUILD), (S.RECORD_DISPATCH, S.KEEP_LOGTAIL), None),
    (
        job(BUILDING, OURS, CANCELLING, NEEDSBUILD),
        (S.RECORD_DISPATCH, S.ABORT_CANCELLED),
        None,
    ),
    (
        job(BUILDING, OTHER),
        (S.LOST,),
        f"the builder is building {OTHER!r}, not {OURS}",
    ),
    (no_job(BUILDING, OTHER, CLEAN), (S.ISOLATION_FAILURE,), None),
    (no_job(BUILDING, OTHER), (S.ABORT_LEFTOVERS,), None),
    # aborting: wait, or count the cancel's time
    (job(ABORTING, OURS), (), None),
    (job(ABORTING, OURS, CANCELLING), (S.CHECK_CANCEL,), None),
    (job(ABORTING, OURS, build=NEEDSBUILD), (S.RECORD_DISPATCH,), None),
    (job(ABORTING, OTHER), (S.LOST,), f"the builder is aborting {OTHER!r}, not {OURS}"),
    (no_job(ABORTING, OTHER, CLEAN), (S.ISOLATION_FAILURE,), None),
    (no_job(ABORTING, OTHER), (), None),
    # waiting: ours is collected; anything else cleaned away
    (job(WAITING, OURS, result=BuilderResult.OK), (S.COLLECT,), None),
    (job(WAITING, OURS, CANCELLING, result=BuilderResult.ABORTED), (S.COLLECT,), None),
    (
        job(WAITING, OURS, build=NEEDSBUILD, result=BuilderResult.OK),
        (S.RECORD_DISPATCH, S.COLLECT),
        None,
    ),
    (
        job(WAITING, OTHER, result=BuilderResult.OK),
        (S.LOST, S.CLEAN, S.NEXT_JOB),
        f"the builder finished {OTHER!r}, not {OURS}",
    ),
    (no_job(WAITING, OTHER, CLEAN, BuilderResult.OK), (S.ISOLATION_FAILURE,), None),
    (
        no_job(WAITING, OTHER, CLEAN, BuilderResult.BUILDERFAIL),
        (S.ISOLATION_FAILURE,),
        None,
    ),
    (
        no_job(WAITING, OTHER, result=BuilderResult.BUILDERFAIL),
        (S.JUDGE_LEFTOVERS, S.CLEAN, S.NEXT_JOB),
        None,
    ),
    (no_job(WAITING, OTHER, result=BuilderResult.OK), (S.CLEAN, S.NEXT_JOB), None),
]


@pytest.mark.parametrize(("seen", "steps", "reason"), CASES)
def test_decide(seen: Seen, steps: tuple[Step, ...], reason: str | None) -> None:
    assert decide(seen) == Decision(steps, reason)


def test_every_row_of_the_table_is_covered() -> None:
    """Each row of the table is the first match of some case above (no dead row)."""
    used = set()
    for seen, _, _ in CASES:
        for i, (state, jobs, detail, _) in enumerate(TABLE):
            if (
                state is seen.state
                and seen.job in jobs
                and detail.value in ("any", seen.detail.value)
            ):
                used.add(i)
                break
    assert used == set(range(len(TABLE)))


def test_a_stuck_builder_comes_first() -> None:
    stuck = Stuck(ABORTING, OTHER, 300.0)
    for seen in (job(ABORTING, OTHER), no_job(ABORTING, OTHER), job(BUILDING, OURS, CANCELLING)):
        marked = attrs.evolve(seen, stuck=stuck, evicting=True)
        assert decide(marked) == Decision((S.STUCK,), stuck=stuck)


def test_a_job_that_must_leave_is_evicted_whatever_the_builder_says() -> None:
    for state in BuilderStatus:
        for build_id in (OURS, OTHER, None):
            seen = attrs.evolve(job(state, build_id), evicting=True)
            assert decide(seen) == Decision((S.EVICT,))
            # and a build on its way out is not watched as running
            assert not seen.running_ours


def test_running_ours() -> None:
    assert job(BUILDING, OURS).running_ours
    assert not job(BUILDING, OTHER).running_ours
    assert not no_job(BUILDING, OURS).running_ours
