"""Failure judgement and candidate rules (pure, plain asserts)."""

from __future__ import annotations

from buildmaster.enums import BuilderCleanStatus, BuildQueueStatus
from buildmaster.model import Builder, BuildQueue
from buildmaster.policy import (
    BuilderAction,
    FailurePolicy,
    JobAction,
    builder_can_run,
    builder_may_take_jobs,
    building_poll_delay,
    judge_failure,
    probe_delay,
)


def builder(**kw: object) -> Builder:
    base: dict[str, object] = dict(
        id=1, name="bob", title="", url="http://bob:8221/", virtualized=False, vm_host=None,
        builderok=True, failnotes=None, failed_by_master=False, manual=False, active=True,
        failure_count=0, clean_status=BuilderCleanStatus.CLEAN, version=None, processor_ids=(1,),
    )  # fmt: skip
    base.update(kw)
    return Builder(**base)  # type: ignore[arg-type]


def job(**kw: object) -> BuildQueue:
    base: dict[str, object] = dict(
        id=2, build_id=2, builder_id=None, status=BuildQueueStatus.WAITING, lastscore=0,
        manual=False, processor_id=1, virtualized=False, date_started=None, logtail=None,
    )  # fmt: skip
    base.update(kw)
    return BuildQueue(**base)  # type: ignore[arg-type]


def test_only_ok_active_automatic_builders_take_jobs() -> None:
    assert builder_may_take_jobs(builder())
    assert not builder_may_take_jobs(builder(builderok=False))
    assert not builder_may_take_jobs(builder(manual=True))
    assert not builder_may_take_jobs(builder(active=False))
    assert not builder_may_take_jobs(builder(processor_ids=()))


def test_virtualization_must_match_both_ways() -> None:
    assert builder_can_run(builder(), job())
    assert not builder_can_run(builder(), job(virtualized=True))  # PPA job, trusted builder
    assert not builder_can_run(builder(virtualized=True), job())  # primary job, virtual builder
    assert builder_can_run(builder(virtualized=True), job(virtualized=True))
    assert not builder_can_run(builder(), job(processor_id=2))


def test_isolation_failure_kills_both_at_once() -> None:
    j = judge_failure(0, 0, isolation=True)
    assert (j.builder, j.job) == (BuilderAction.DISABLE, JobAction.FAIL)


def test_equal_counts_retry_then_requeue_the_job() -> None:
    assert judge_failure(1, 1).job is JobAction.NONE
    assert judge_failure(2, 2).job is JobAction.NONE
    j = judge_failure(3, 3)
    assert (j.builder, j.job) == (BuilderAction.NONE, JobAction.REQUEUE)


def test_a_builder_that_failed_more_is_blamed() -> None:
    j = judge_failure(2, 1)
    assert (j.builder, j.job) == (BuilderAction.RESET, JobAction.REQUEUE)
    assert j.forgive_job  # its bad luck is not held against the job
    assert not judge_failure(3, 3).forgive_job
    assert j.forgive_job  # its bad luck is not held against the job
    assert not judge_failure(3, 3).forgive_job
    j = judge_failure(5, 1)
    assert (j.builder, j.job) == (BuilderAction.DISABLE, JobAction.REQUEUE)
    assert "disabling the builder" in j.reason


def test_a_job_that_keeps_breaking_builders_fails() -> None:
    j = judge_failure(1, 2)  # failed more than this builder, but only twice: try elsewhere
    assert (j.builder, j.job) == (BuilderAction.NONE, JobAction.REQUEUE)
    j = judge_failure(1, 3)
    assert (j.builder, j.job) == (BuilderAction.NONE, JobAction.FAIL)
    assert "the job is at fault" in j.reason and not j.forgive_job


def test_equal_counts_never_disable_the_builder() -> None:
    # a job that breaks every builder it meets must not take them out of service one by one
    j = judge_failure(7, 7)
    assert (j.builder, j.job, j.forgive_job) == (BuilderAction.NONE, JobAction.REQUEUE, False)


def test_a_job_failing_on_a_failing_builder() -> None:
    j = judge_failure(5, 6)
    assert (j.builder, j.job) == (BuilderAction.DISABLE, JobAction.FAIL)


def test_a_builder_without_a_job_is_disabled_after_five_failures() -> None:
    assert judge_failure(4, None).builder is BuilderAction.NONE
    assert judge_failure(5, None).builder is BuilderAction.DISABLE


def test_the_numbers_are_configurable() -> None:
    strict = FailurePolicy(job_reset_threshold=1, builder_disable_threshold=2)
    assert judge_failure(1, 1, policy=strict).job is JobAction.REQUEUE
    assert judge_failure(2, None, policy=strict).builder is BuilderAction.DISABLE
    assert judge_failure(2, 1, policy=strict).builder is BuilderAction.DISABLE
    assert judge_failure(1, 2, policy=strict).job is JobAction.FAIL


def test_probe_backoff_doubles_up_to_a_ceiling() -> None:
    assert [probe_delay(n, 15, 600) for n in range(7)] == [15, 30, 60, 120, 240, 480, 600]
    assert probe_delay(10_000, 15, 600) == 600


def test_a_long_build_is_polled_less_often_but_its_end_is_noticed_soon_enough() -> None:
    # a fresh build: every scan interval
    assert building_poll_delay(0.0, 1.0, 0.1, 30.0) == 1.0
    assert building_poll_delay(5.0, 1.0, 0.1, 30.0) == 1.0
    # later: a tenth of its age, so its end is noticed within ~10 % of its length ...
    assert building_poll_delay(100.0, 1.0, 0.1, 30.0) == 10.0
    # ... but at least every 30 s however long it runs
    assert building_poll_delay(3600.0, 1.0, 0.1, 30.0) == 30.0
    # never more often than the scan interval, whatever the ceiling says
    assert building_poll_delay(3600.0, 15.0, 0.1, 5.0) == 15.0
    # fraction 0: every scan
    assert building_poll_delay(3600.0, 1.0, 0.0, 30.0) == 1.0
