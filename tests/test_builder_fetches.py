"""What builders fetch for a dispatch, as a running master counts it: real slavesim builders
over real sockets, /metrics over HTTP, the builds' "dispatched" events in the API."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from test_metrics_health import samples

from buildmaster.scan.fetches import FileFetch, fetch_note, size_text
from buildmaster.testing import wait_for


def files(found: dict[Any, float], kind: str, fetched: str) -> float:
    return found[("buildmaster_builder_files_total", (("fetched", fetched), ("kind", kind)))]


def fetched_bytes(found: dict[Any, float], kind: str) -> float:
    return found[("buildmaster_builder_fetched_bytes_total", (("kind", kind),))]


async def built(api_world: Any, *builds: Any) -> None:
    store = api_world.store

    async def done() -> bool:
        states = [(await store.builds.get(b)).status.name for b in builds]
        return states == ["FULLYBUILT"] * len(builds)

    await wait_for(api_world.reactor, done, 60, "the builds")


async def dispatched_text(api_world: Any, build_id: int) -> str:
    shown = (await api_world.admin.get(f"/api/v1/builds/{build_id}")).json
    [text] = [e["text"] for e in shown["events"] if e["kind"] == "dispatched"]
    return str(text)


@pytest_twisted.ensureDeferred
async def test_a_trusted_builder_fetches_a_series_chroot_once_then_has_it(
    api_world: Any,
) -> None:
    """One trusted builder builds two builds of the same series: it fetches the chroot for
    the first and says it has it in its cache for the second; each build's sources are
    new to it. /metrics counts it, and each build's "dispatched" event says it."""
    world, store = api_world.world, api_world.store
    sim, _ = await world.builder("t1")
    first = await world.queue("fetch-one")
    second = await world.queue("fetch-two")
    context = await store.jobs.context(first.id)
    assert context.chroot is not None
    chroot_size = context.chroot.filesize
    source_sizes = [f.file.filesize for f in context.files]
    second_sizes = [f.file.filesize for f in (await store.jobs.context(second.id)).files]
    before = samples((await api_world.anonymous.get("/metrics")).body.decode())
    assert files(before, "chroot", "true") == 0 and files(before, "chroot", "false") == 0
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await built(api_world, first, second)
    # the builder's own record: the chroot's SHA-1 was asked for twice, downloaded once
    asked = [c for c in sim.history if c.method == "ensurepresent"]
    assert [c.args[0] for c in asked].count(context.chroot.sha1) == 2
    found = samples((await api_world.anonymous.get("/metrics")).body.decode())
    assert files(found, "chroot", "true") == 1
    assert files(found, "chroot", "false") == 1
    assert files(found, "chroot", "unknown") == 0
    assert files(found, "source", "true") == 2 * len(source_sizes)
    assert files(found, "source", "false") == 0
    assert fetched_bytes(found, "chroot") == chroot_size
    assert fetched_bytes(found, "source") == sum(source_sizes) + sum(second_sizes)
    assert await dispatched_text(api_world, first.id) == (
        f"dispatched to t1 (chroot fetched: {size_text(chroot_size)};"
        f" sources fetched: 1 file, {size_text(sum(source_sizes))})"
    )
    assert await dispatched_text(api_world, second.id) == (
        "dispatched to t1 (chroot from the builder's cache;"
        f" sources fetched: 1 file, {size_text(sum(second_sizes))})"
    )
    # and the build's page shows the same sentence
    page = (await api_world.anonymous.get(f"/builds/{second.id}")).body.decode()
    assert (
        "chroot from the builder&#39;s cache" in page or "chroot from the builder's cache" in page
    )


@pytest_twisted.ensureDeferred
async def test_a_builder_that_says_something_else_is_counted_as_unknown(api_world: Any) -> None:
    """A builder whose ensurepresent answers ``[True, <other words>]`` has the file all the
    same: the build goes ahead, the file is counted as unknown, nothing as fetched, and the
    event quotes the builder's words (clipped)."""
    world = api_world.world
    sim, _ = await world.builder("odd")
    sim.faults.ensurepresent_message = "Fetched from the moon " + "x" * 200
    build = await world.queue("odd-words")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await built(api_world, build)
    found = samples((await api_world.anonymous.get("/metrics")).body.decode())
    assert files(found, "chroot", "unknown") == 1 and files(found, "source", "unknown") == 1
    assert files(found, "chroot", "true") == 0 and fetched_bytes(found, "chroot") == 0
    text = await dispatched_text(api_world, build.id)
    assert text.startswith("dispatched to odd (chroot present, the builder said 'Fetched from")
    assert "x" * 50 not in text  # clipped


def test_the_note_says_what_was_fetched_and_what_was_cached() -> None:
    assert fetch_note([]) == ""
    assert (
        fetch_note(
            [
                FileFetch("chroot", 312_000_000, True, "Download"),
                FileFetch("source", 1200, True, "Download"),
                FileFetch("source", 800, False, "Cache"),
                FileFetch("source", 5, None, "Beamed"),
            ]
        )
        == "chroot fetched: 312 MB; sources: 1 file fetched, 1.2 kB, 1 from the builder's"
        " cache, 1 present, the builder said 'Beamed'"
    )
    assert (
        fetch_note([FileFetch("chroot", 9, False, "Cache"), FileFetch("source", 9, False, "Cache")])
        == "chroot from the builder's cache; sources from the builder's cache"
    )
    assert [size_text(n) for n in (1, 999, 1000, 15_400, 2_500_000_000)] == [
        "1 byte",
        "999 bytes",
        "1.0 kB",
        "15 kB",
        "2.5 GB",
    ]
