"""/metrics, /healthz and /readyz of a running master."""

from __future__ import annotations

import datetime
from typing import Any

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from buildmaster.metrics import Metrics
from buildmaster.testing import wait_for
from buildmaster.web.metrics import FarmMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_the_farm_did(api_world: Any) -> None:
    world, store, reactor = api_world.world, api_world.store, api_world.reactor
    farm = FarmMetrics(reactor, store, api_world.harness.metrics, lag=datetime.timedelta(0))
    await farm.refresh()  # where counting starts
    await world.builder("t1")
    builds = [await world.queue(f"m{i}") for i in range(2)]
    master = world.harness.master
    master.startService()
    await master.when_ready()

    async def done() -> bool:
        states = [(await store.builds.get(b)).status.name for b in builds]
        return states == ["FULLYBUILT", "FULLYBUILT"]

    await wait_for(reactor, done, 60, "the builds")
    await farm.refresh()
    for path in ("/api/v1", "/api/v1/builds", "/api/v1/builds", "/api/v1/nothing"):
        await api_world.anonymous.get(path)  # the second listing: the shared answer
    for method in ("BREW", "XYZZY"):  # methods nobody knows are not label values of their own
        refused = await api_world.anonymous.call(method, "/api/v1/builds")
        assert refused.status == 405
    text = (await api_world.anonymous.get("/metrics")).body.decode()
    found = samples(text)
    assert found[("buildmaster_builds_finished_total", (("state", "FULLYBUILT"),))] == 2
    assert found[("buildmaster_builds_finished_total", (("state", "FAILEDTOBUILD"),))] == 0
    assert found[("buildmaster_dispatch_latency_seconds_count", ())] == 2
    assert found[("buildmaster_builders", (("processor", "386"), ("state", "idle")))] == 1
    assert (
        found[("buildmaster_queue_waiting", (("processor", "386"), ("virtualized", "false")))] == 0
    )
    assert found[("buildmaster_collection_seconds_count", ())] == 2
    assert found[("buildmaster_collection_bytes_sum", ())] > 0
    assert found[("buildmaster_handover_seconds_count", ())] == 1  # t1: the first to the second
    assert found[("buildmaster_scan_seconds_count", ())] >= 2
    assert found[("buildmaster_builder_failures_total", (("kind", "unreachable"),))] == 0
    assert found[("buildmaster_api_requests_total", (("method", "GET"), ("status", "2xx")))] == 3
    assert found[("buildmaster_api_requests_total", (("method", "GET"), ("status", "4xx")))] == 1
    assert found[("buildmaster_api_requests_total", (("method", "OTHER"), ("status", "4xx")))] == 2
    assert not [labels for _, labels in found if ("method", "BREW") in labels]
    # a builder that refuses connections is counted as it fails
    sim, _ = await world.builder("t2")
    sim.faults.refuse = True
    await wait_for(
        reactor,
        lambda: master.metrics.builder_failures.labels("unreachable")._value.get() > 0,
        60,
        "a failure",
    )
    # queued builds and their age, by kind
    waiting = await world.queue("waits", ppa=True)
    await farm.refresh()
    found = samples((await api_world.anonymous.get("/metrics")).body.decode())
    key = (("processor", "386"), ("virtualized", "true"))
    assert found[("buildmaster_queue_waiting", key)] == 1
    assert found[("buildmaster_queue_oldest_wait_seconds", key)] >= 0
    assert waiting.id


def test_two_masters_in_one_process_have_registries_of_their_own() -> None:
    first, second = Metrics(), Metrics()
    first.handed_over(1.0)
    assert second.handover_seconds._sum.get() == 0  # a clash would have raised already


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(api_world: Any) -> None:
    anonymous, master = api_world.anonymous, api_world.harness.master
    assert (await anonymous.get("/healthz")).json == {"alive": True}
    not_yet = await anonymous.get("/readyz")
    assert not_yet.status == 503
    assert not_yet.json["checks"]["database"]["ok"] is True
    assert not_yet.json["checks"]["scanner"]["detail"] == "the scan loop is not running"
    master.startService()
    await master.when_ready()
    await wait_for(api_world.reactor, lambda: master.last_scan_cycle is not None, 60, "a cycle")
    ready = await anonymous.get("/readyz")
    assert ready.status == 200 and ready.json["ready"] is True
    await master.stopService()
    assert (await anonymous.get("/readyz")).status == 503
    assert (await anonymous.call("POST", "/metrics")).status == 405
