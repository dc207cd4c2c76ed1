"""The seed's sample data, loaded into a real database."""

from __future__ import annotations

import pytest_twisted

from buildmaster.enums import BuildQueueStatus, BuildStatus
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store


@pytest_twisted.ensureDeferred
async def test_sample_data_recreates_the_seed_world(store: Store) -> None:
    data = await load_sample_data(store)

    assert await store.builders.count() == 2
    assert [b.name for b in await store.builders.all()] == ["bob", "frog"]
    bob = await store.builders.getByName("bob")
    frog = await store.builders.getByName("frog")
    assert (bob.url, frog.url) == ("http://localhost:8221/", "http://localhost:9221/")
    assert bob.trusted and frog.trusted
    assert bob.processor_ids == (data.processor_386.id,) == frog.processor_ids

    das = await store.distributions.lookup("ubuntu", "hoary", "i386")
    assert das.processor_name == "386"
    assert das.chroot_id is None
    assert (await store.distributions.lookup("ubuntu", "hoary", "amd64")).processor_name == "amd64"

    ppa = await store.archives.getPPAByName(data.cprov)
    assert ppa.require_virtualized and ppa.reference == "~cprov/ubuntu/ppa"

    lost = await store.queue.get(1)
    assert lost.builder_id == bob.id and lost.status is BuildQueueStatus.RUNNING
    assert lost.buildstart is not None
    assert (await store.builds.get(lost.build_id)).status is BuildStatus.BUILDING

    waiting = await store.queue.get(2)
    assert waiting.builder_id is None and waiting.buildstart is None
    assert waiting.status is BuildQueueStatus.WAITING and not waiting.virtualized
    build = await store.builds.get(waiting.build_id)
    assert build.status is BuildStatus.NEEDSBUILD
    files = await store.sources.files(build.sourcepackagerelease_id)
    assert [f.file.filename for f in files] == ["alsa-utils_1.0.9a-4ubuntu1.dsc"]
    # release pocket 1500 + main 1000 + medium urgency 10
    assert waiting.lastscore == 2510


@pytest_twisted.ensureDeferred
async def test_sample_data_refuses_to_load_twice(store: Store) -> None:
    await load_sample_data(store)
    try:
        await load_sample_data(store)
    except ValueError as e:
        assert "already holds sample data" in str(e)
    else:
        raise AssertionError("loading twice was accepted")
