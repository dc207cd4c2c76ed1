"""Builders through the operator API: listed, shown, added, changed and removed."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from test_api_basics import assert_problem

from buildmaster.testing import wait_for


@pytest_twisted.ensureDeferred
async def test_builders_are_added_listed_filtered_and_shown(api_world: Any) -> None:
    admin, anonymous = api_world.admin, api_world.anonymous
    sim = await api_world.harness.start_builder("t1", "i386")
    added = await admin.post(
        "/api/v1/builders",
        {"name": "t1", "url": sim.url, "processors": ["386"], "title": "Trusty one"},
    )
    assert added.status == 201, added.body
    assert added.header("location") == "/api/v1/builders/t1"
    assert added.json["processors"] == ["386"] and added.json["state"] == "idle"
    virtual = await admin.post(
        "/api/v1/builders",
        {
            "name": "v1",
            "url": "http://127.0.0.1:9/",
            "processors": ["amd64", "386"],
            "virtualized": True,
            "vm_host": "v1.vm",
        },
    )
    assert virtual.status == 201, virtual.body
    assert_problem(
        await admin.post("/api/v1/builders", {"name": "t1", "url": sim.url, "processors": ["386"]}),
        409,
        "conflict",
        "t1 exists already",
    )
    assert_problem(
        await admin.post(
            "/api/v1/builders", {"name": "t2", "url": sim.url, "processors": ["sparc"]}
        ),
        422,
        "unprocessable",
        "no processor sparc",
        "386, amd64",
    )
    names = lambda answer: [b["name"] for b in answer.json["builders"]]  # noqa: E731
    assert names(await anonymous.get("/api/v1/builders")) == ["t1", "v1"]
    assert names(await anonymous.get("/api/v1/builders?processor=amd64")) == ["v1"]
    assert names(await anonymous.get("/api/v1/builders?virtualized=false")) == ["t1"]
    assert names(await anonymous.get("/api/v1/builders?state=idle")) == ["t1", "v1"]
    assert "bob" in names(await anonymous.get("/api/v1/builders?state=inactive"))
    shown = await anonymous.get("/api/v1/builders/v1")
    assert shown.json["vm_host"] == "v1.vm" and shown.json["virtualized"] is True
    assert shown.json["events"][0]["kind"] == "registered"
    assert shown.json["recent_builds"] == [] and shown.json["current_build"] is None
    assert_problem(await anonymous.get("/api/v1/builders/nobody"), 404, "not-found", "nobody")


@pytest_twisted.ensureDeferred
async def test_a_builder_is_disabled_enabled_and_changed(api_world: Any) -> None:
    admin = api_world.admin
    sim, builder = await api_world.world.builder("t1")
    uploader = await api_world.uploader(api_world.world.data.cprov_ppa)
    assert_problem(
        await uploader.patch("/api/v1/builders/t1", {"enabled": False}), 403, "forbidden"
    )
    disabled = await admin.patch(
        "/api/v1/builders/t1", {"enabled": False, "reason": "disk replacement"}
    )
    assert disabled.status == 200, disabled.body
    assert disabled.json["state"] == "disabled" and disabled.json["ok"] is False
    assert disabled.json["failnotes"] == "disabled by an operator: disk replacement"
    assert disabled.json["out_of_service_since"] is not None
    history = (await admin.get("/api/v1/builders/t1")).json["events"]
    assert history[0]["kind"] == "disabled" and "disk replacement" in history[0]["text"]
    enabled = await admin.patch("/api/v1/builders/t1", {"enabled": True, "reason": "new disk"})
    assert enabled.json["state"] == "idle" and enabled.json["failnotes"] is None
    changed = await admin.patch(
        "/api/v1/builders/t1",
        {"manual": True, "processors": ["amd64"], "url": "http://127.0.0.1:1/", "vm_host": "x"},
    )
    assert changed.status == 200, changed.body
    body = changed.json
    assert (body["state"], body["processors"], body["builder_url"], body["vm_host"]) == (
        "manual",
        ["amd64"],
        "http://127.0.0.1:1/",
        "x",
    )
    assert (await api_world.store.builders.get(builder)).manual
    assert_problem(await admin.patch("/api/v1/builders/t1", {}), 400, "invalid-body")
    assert_problem(
        await admin.patch("/api/v1/builders/t1", {"colour": "red"}), 400, "invalid-body", "colour"
    )


@pytest_twisted.ensureDeferred
async def test_a_builder_is_removed_only_when_it_has_no_job(api_world: Any) -> None:
    admin, store, world = api_world.admin, api_world.store, api_world.world
    await world.builder("t1")
    world.harness.farm.build_time = 30.0
    build = await world.queue("hello")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(
        api_world.reactor,
        lambda: _state(store, build.id, "BUILDING"),
        60,
        "the build to start",
    )
    busy = await admin.delete("/api/v1/builders/t1")
    assert_problem(
        busy, 409, "conflict", f"busy with build {build.id}", f"/api/v1/builds/{build.id}/cancel"
    )
    cancelled = await admin.post(f"/api/v1/builds/{build.id}/cancel")
    assert cancelled.status == 200 and cancelled.json["state"] in ("CANCELLING", "CANCELLED")
    await wait_for(
        api_world.reactor, lambda: _state(store, build.id, "CANCELLED"), 60, "the cancel"
    )
    await wait_for(
        api_world.reactor,
        lambda: _no_job(store, "t1"),
        60,
        "the builder to be free",
    )
    assert (await admin.delete("/api/v1/builders/t1")).status == 204
    # it built something: kept, inactive, for its history
    gone = await admin.get("/api/v1/builders/t1")
    assert gone.json["state"] == "inactive" and gone.json["active"] is False
    assert "t1" not in [b["name"] for b in (await admin.get("/api/v1/builders")).json["builders"]]
    again = await admin.post(
        "/api/v1/builders", {"name": "t1", "url": "http://127.0.0.1:1/", "processors": ["386"]}
    )
    assert_problem(again, 409, "conflict", '{"active": true}')
    # a builder that never built anything is deleted for good
    await admin.post(
        "/api/v1/builders", {"name": "t9", "url": "http://127.0.0.1:1/", "processors": ["386"]}
    )
    assert (await admin.delete("/api/v1/builders/t9")).status == 204
    assert (await admin.get("/api/v1/builders/t9")).status == 404


@pytest_twisted.ensureDeferred
async def test_a_builder_added_while_the_master_runs_takes_a_waiting_build_at_once(
    make_world: Any,
) -> None:
    from api_support import ApiClient

    from buildmaster.config import MasterConfig

    # an hour between two scans of a builder: it is taken because it came, not in its turn
    world = await make_world(MasterConfig(scan_interval=3600.0), 30.0)
    store, reactor, master = world.store, world.harness.reactor, world.harness.master
    token = await store.tokens.create(admin=True, description="the test admin")
    admin = ApiClient(reactor, world.harness.base_url).with_token(token.secret)
    try:
        build = await world.queue("hello")
        master.startService()
        await master.when_ready()
        sim = await world.harness.start_builder("late", "i386")
        added_at = reactor.seconds()
        added = await admin.post(
            "/api/v1/builders", {"name": "late", "url": sim.url, "processors": ["386"]}
        )
        assert added.status == 201, added.body
        await wait_for(reactor, lambda: _state(store, build.id, "BUILDING"), 30, "the build")
        assert reactor.seconds() - added_at < 30
        shown = (await admin.get(f"/api/v1/builds/{build.id}")).json
        assert shown["builder"] == "late", shown
    finally:
        admin.close()


async def _state(store: Any, build_id: int, state: str) -> bool:
    return (await store.builds.get(build_id)).status.name == state


async def _no_job(store: Any, name: str) -> bool:
    builder = await store.builders.getByName(name)
    return await store.queue.get_for_builder(builder) is None


@pytest_twisted.ensureDeferred
async def test_names_that_would_become_options_of_the_reset_command_are_refused(
    api_world: Any,
) -> None:
    """A builder's name and VM host become arguments of the VM reset command: the API
    refuses those the store would (an option, an empty host, a trailing newline) with a
    400 that says what is wrong, never a 500, and nothing is stored."""
    admin = api_world.admin
    await api_world.world.builder("t1")
    new = {"url": "http://127.0.0.1:9/", "processors": ["386"], "virtualized": True}
    assert_problem(
        await admin.post("/api/v1/builders", {**new, "name": "v1", "vm_host": "-oProxy=x"}),
        400,
        "invalid-body",
        "vm_host",
    )
    assert_problem(
        await admin.post("/api/v1/builders", {**new, "name": "v1\n", "vm_host": "v1.vm"}),
        400,
        "invalid-body",
        "bad builder name",
    )
    for host in ("", "-x", "v1.vm\n", "a b"):
        assert_problem(
            await admin.patch("/api/v1/builders/t1", {"vm_host": host}), 400, "invalid-body"
        )
    assert [b.name for b in await api_world.store.builders.all() if b.active] == ["t1"]
    assert (await api_world.store.builders.getByName("t1")).vm_host is None


@pytest_twisted.ensureDeferred
async def test_a_builders_history_keeps_private_builds_to_those_who_may_see_them(
    api_world: Any,
) -> None:
    world, store = api_world.world, api_world.store
    ppa = world.data.cprov_ppa
    await store.db.execute("UPDATE archive SET private = true WHERE id = %s", (ppa.id,))
    hidden = await world.queue("hidden", ppa=True)
    shown = await world.queue("shown")
    _, builder = await world.builder("t1")
    for build in (hidden, shown):
        await store.db.execute(
            "INSERT INTO event (kind, message, builder, build) VALUES ('dispatched', %s, %s, %s)",
            (f"build {build.id} dispatched", builder.id, build.id),
        )
    insider = await api_world.uploader(ppa)

    async def history(client: Any) -> list[tuple[Any, str]]:
        answer = await client.get("/api/v1/builders/t1")
        assert answer.status == 200, answer.body
        return [
            (e["build"], e["message"]) for e in answer.json["events"] if e["kind"] == "dispatched"
        ]

    assert await history(api_world.anonymous) == [
        (shown.id, f"build {shown.id} dispatched"),
        (None, "(a private build)"),
    ]
    for who in (insider, api_world.admin):
        assert await history(who) == [
            (shown.id, f"build {shown.id} dispatched"),
            (hidden.id, f"build {hidden.id} dispatched"),
        ]
