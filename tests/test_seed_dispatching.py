"""The seed scenario, "Buildd Dispatching": find an available builder in IDLE state, push the
required files to it, then ask it to start the build.

Step by step in the seed's vocabulary, against a real database, a real librarian over HTTP,
bob served by slavesim on a real port and frog's port closed.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from buildmaster.config import MasterConfig
from buildmaster.enums import (
    BuildQueueStatus,
    BuildStatus,
    PackagePublishingPocket,
    SourcePackageFileType,
)
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store
from buildmaster.store.cluster import free_port
from buildmaster.testing import FarmHarness

DSC = b"Format: 1.0\nSource: alsa-utils\nVersion: 1.0.9a-4ubuntu1\n"


@pytest.fixture
def vm_resets(tmp_path: Path) -> Path:
    """A VM reset command that records its arguments."""
    log = tmp_path / "vm-resets.log"
    script = tmp_path / "resume-vm"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


@pytest_twisted.async_yield_fixture
async def harness(
    reactor: Any, store: Store, tmp_path: Path, vm_resets: Path
) -> AsyncIterator[FarmHarness]:
    config = MasterConfig(vm_resume_command=f"{tmp_path / 'resume-vm'} %(vm_host)s %(buildd_name)s")
    h = await FarmHarness.start(reactor, store, tmp_path, config, build_time=3600)
    yield h
    await h.stop()


@pytest_twisted.ensureDeferred
async def test_buildd_dispatching(
    store: Store, harness: FarmHarness, captured_log: Any, vm_resets: Path
) -> None:
    data = await load_sample_data(store)
    master = harness.master

    # bob is served by a simulated builder on a real port; nothing listens on frog's port
    bob_sim = await harness.start_builder("bob", "i386")
    await store.builders.set_url(data.bob, bob_sim.url)
    frog_url = f"http://localhost:{free_port()}/"
    await store.builders.set_url(data.frog, frog_url)

    # a chroot for hoary/i386, through the librarian
    chroot = await harness.add_file(
        "chroot-ubuntu-hoary-i386.tar.bz2", b"chroot tarball" * 1000, "application/x-bzip2"
    )
    await master.addOrUpdateChroot(data.hoary_i386, chroot.id)

    # the builder set
    assert await store.builders.count() == 2
    assert [b.name for b in await store.builders.all()] == ["bob", "frog"]

    # the lost job 1 on bob is destroyed
    lost = await store.queue.get(1)
    assert lost.builder_id == data.bob.id
    await store.queue.destroySelf(lost)

    # check the builders: frog refuses the connection
    hoary_i386 = await store.distributions.lookup("ubuntu", "hoary", "i386")
    master.addDistroArchSeries(hoary_i386)
    await master.setupBuilders(hoary_i386)

    frog = await store.builders.getByName("frog")
    assert frog.builderok is False
    assert frog.failnotes == "(111, 'Connection refused')"
    assert (
        f"frog ({frog_url}) marked as failed due to: (111, 'Connection refused')"
        in captured_log.warnings()
    )

    bob = await store.builders.getByName("bob")
    assert bob.builderok is True and bob.trusted
    assert await master.is_available(bob) is True
    assert await master.is_available(frog) is False

    # the candidate for bob is job 2: a trusted build nobody has taken
    job = await master.findBuildCandidate(bob)
    assert job is not None and job.id == 2
    build = await store.builds.get(job.build_id)
    assert build.status is BuildStatus.NEEDSBUILD
    assert job.builder_id is None and job.buildstart is None
    assert build.is_virtualized is False

    # its .dsc is replaced by a file that is really in the librarian
    [dsc] = await store.sources.files(build.sourcepackagerelease_id)
    real_dsc = await harness.add_file(dsc.file.filename, DSC, "text/x-debian-source-package")
    await store.sources.replace_file(build.sourcepackagerelease_id, dsc.file.id, real_dsc.id)

    # dispatch: bob gets the files and starts building
    assert await master.dispatchBuildCandidate(bob, job) is True
    job = await store.queue.get(2)
    assert job.builder_id == bob.id
    assert job.buildstart is not None and job.buildstart.utcoffset() is not None
    build = await store.builds.get(job.build_id)
    assert build.status is BuildStatus.BUILDING
    assert bob_sim.state.build_id == build.cookie == f"PACKAGEBUILD-{build.id}"
    assert bob_sim.cache.has(chroot.sha1) and bob_sim.cache.has(real_dsc.sha1)
    [call] = [c for c in bob_sim.history if c.method == "build"]
    cookie, builder_type, chroot_sha1, filemap, args = call.args
    assert (cookie, builder_type, chroot_sha1) == (build.cookie, "binarypackage", chroot.sha1)
    assert filemap == {"alsa-utils_1.0.9a-4ubuntu1.dsc": real_dsc.sha1}
    assert (
        args["distribution"] == "ubuntu" and args["series"] == "hoary" and args["suite"] == "hoary"
    )
    assert args["ogrecomponent"] == "main" and args["arch_tag"] == "i386"
    assert args["archive_purpose"] == "PRIMARY" and args["archive_private"] is False
    assert args["archives"] == ["deb http://archive.ubuntu.com/ubuntu hoary main"]

    # bob is shut down; the build is marked FAILEDTOBUILD and the job destroyed
    await bob_sim.stop()
    assert await master.is_available(bob) is False
    await store.builds.set_status(build, BuildStatus.FAILEDTOBUILD)
    await store.queue.destroySelf(job)
    # bob is restarted: a fresh daemon, idle
    bob_sim.state.reset()
    await bob_sim.start()
    assert await master.is_available(bob) is True

    # a PPA build for cprov: queue entry 3, untrusted, no builder
    pmount_dsc = await harness.add_file(
        "pmount_0.1-1.dsc", b"Source: pmount\n", "text/x-debian-source-package"
    )
    spr = await store.sources.new(
        "pmount", "0.1-1", data.hoary, files=[(pmount_dsc.id, SourcePackageFileType.DSC)]
    )
    ppa = await store.archives.getPPAByName(data.cprov)
    ppa_build = await store.builds.createBuild(
        spr, hoary_i386, PackagePublishingPocket.RELEASE, ppa
    )
    ppa_job = await store.queue.createBuildQueueEntry(ppa_build)
    assert ppa_job.id == 3 and ppa_job.virtualized and ppa_job.builder_id is None
    assert ppa_job.status is BuildQueueStatus.WAITING

    # a PPA job is never offered to a trusted builder
    assert await master.findBuildCandidate(await store.builders.getByName("bob")) is None

    # bob becomes untrusted, with a VM host
    await store.builders.set_trusted(bob, False)
    bob = await store.builders.set_vm_host(bob, "localhost.ppa")
    assert bob.virtualized and bob.vm_host == "localhost.ppa"
    job = await master.findBuildCandidate(bob)
    assert job is not None and job.id == 3
    assert await master.dispatchBuildCandidate(bob, job) is True
    job = await store.queue.get(3)
    assert job.builder_id == bob.id and job.buildstart is not None
    ppa_build = await store.builds.get(ppa_build)
    assert ppa_build.status is BuildStatus.BUILDING
    assert bob_sim.state.build_id == ppa_build.cookie
    assert bob_sim.state.state == "BuilderStatus.BUILDING"
    # the VM was reset before the dispatch, with the builder's vm_host and name
    assert vm_resets.read_text().splitlines() == ["localhost.ppa bob"]
    [call] = [c for c in bob_sim.history if c.method == "build"][-1:]
    args = call.args[4]
    assert args["archive_purpose"] == "PPA" and args["fast_cleanup"] is True
    assert args["archives"] == [
        "deb http://ppa.launchpadcontent.net/cprov/ppa/ubuntu hoary main",
        "deb http://archive.ubuntu.com/ubuntu hoary main restricted universe multiverse",
        "deb http://archive.ubuntu.com/ubuntu hoary-security main restricted universe multiverse",
        "deb http://archive.ubuntu.com/ubuntu hoary-updates main restricted universe multiverse",
    ]

    # and a trusted job is never offered to a virtualized builder
    trusted_spr = await store.sources.new(
        "hello", "2.0", data.hoary, files=[(pmount_dsc.id, SourcePackageFileType.DSC)]
    )
    trusted = await store.builds.createBuild(
        trusted_spr, hoary_i386, PackagePublishingPocket.RELEASE, data.primary
    )
    await store.queue.createBuildQueueEntry(trusted)
    newbie_sim = await harness.start_builder("newbie", "i386")
    newbie = await store.builders.new(
        "newbie", newbie_sim.url, [data.processor_386], virtualized=True, vm_host="newbie.ppa"
    )
    assert await master.findBuildCandidate(newbie) is None
